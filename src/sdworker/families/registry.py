"""base_model (contract section 7) -> the family that generates with it."""

from __future__ import annotations

from .base import Family
from .flux import FluxFamily
from .hidream import HiDreamFamily
from .sd import SDFamily
from .wan import WanFamily

FAMILIES: tuple[Family, ...] = (SDFamily(), FluxFamily(), WanFamily(), HiDreamFamily())

_BY_BASE: dict[str, Family] = {}
for _family in FAMILIES:
    for _base in _family.base_models:
        if _base in _BY_BASE:  # one family per base model, never a silent override
            raise RuntimeError(f"base model {_base!r} is claimed by families {_BY_BASE[_base].name} and {_family.name}")
        _BY_BASE[_base] = _family


def for_base_model(base_model: str) -> Family | None:
    """The family of `base_model`; None when no family generates with it (sd3, unknown, ...)."""
    return _BY_BASE.get(base_model)


def supported_base_models() -> tuple[str, ...]:
    """Every base model some family generates with, in registry order."""
    return tuple(_BY_BASE)
