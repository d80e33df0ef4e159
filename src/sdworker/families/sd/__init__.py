"""Stable Diffusion 1.x / 2.x and SDXL (Pony): the family's request mapping (family.py) and what
detection, LoRA, ControlNet and preview code ask of it. Importing the package imports no torch."""

from .family import SDFamily

__all__ = ["SDFamily"]
