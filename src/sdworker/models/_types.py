"""The detection result and the contract's vocabularies, shared by every detector module."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("checkpoint", "vae", "lora", "embedding", "controlnet", "upscaler", "unet", "text_encoder", "unknown")
#: Contract base_model ids: the one vocabulary of base models. Detection produces them, and every
#: family's base_models are among them (families.registry refuses one that is not).
BASE_MODELS = (
    "sd_1_5", "sd_2", "sdxl", "sdxl_refiner", "pony", "sd3", "flux", "flux_dev", "flux_schnell", "flux_krea",
    "hidream", "wan_2_1", "wan_2_2", "unknown",
)
FORMATS = ("safetensors", "diffusers", "ckpt", "gguf")


@dataclass(frozen=True)
class Detection:
    """What a model is. ``details`` carries the evidence (dims, layout, variant) as plain JSON values."""

    kind: str
    base_model: str
    format: str = "safetensors"
    details: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
