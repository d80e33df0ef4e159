"""Stable Diffusion 3 / 3.5: the family's request mapping (family.py), its tiny builder (tiny.py)
and its built-in presets (presets.py). Importing the package imports no torch."""

from .family import SD3Family

__all__ = ["SD3Family"]
