"""What every denoising job shares besides the pipeline call itself (managers.runner): the
contract's generators and the pipeline's denoiser."""

from __future__ import annotations

from typing import Any


def generators(torch: Any, seed: int, count: int) -> list[Any]:
    """Contract: image i draws its noise from its own CPU generator seeded with seed + i."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def denoiser_of(pipe: Any) -> Any:
    """The pipeline's denoiser: its UNet, else its transformer (Flux, HiDream; Wan's first expert)."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else getattr(pipe, "transformer", None)


def denoisers_of(pipe: Any) -> list[Any]:
    """Every denoiser the pipeline calls: Wan 2.2 adds its low-noise expert, `transformer_2`."""
    return [m for m in (denoiser_of(pipe), getattr(pipe, "transformer_2", None)) if m is not None]
