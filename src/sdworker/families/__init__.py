"""Model families: what differs between Stable Diffusion and Flux generation (see families.base)."""

from .base import Checked, Defaults, Family
from .registry import FAMILIES, for_base_model, supported_base_models

__all__ = ["FAMILIES", "Checked", "Defaults", "Family", "for_base_model", "supported_base_models"]
