"""Wan 2.1 / 2.2 video: the family's request mapping and model reading (family.py) and its tiny
builder (tiny.py). Importing the package imports no torch."""

from .family import (
    DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, SAMPLERS, WanFamily, WanModel, WanSampler,
    build_scheduler, read_model, sampler_choice, wan_base,
)

__all__ = [
    "DEFAULT_FPS", "DEFAULT_FRAMES", "DEFAULT_HEIGHT", "DEFAULT_WIDTH", "SAMPLERS", "WanFamily", "WanModel", "WanSampler",
    "build_scheduler", "read_model", "sampler_choice", "wan_base",
]
