"""FLUX.1 (dev, schnell, Krea, Fill): the family's request mapping (family.py) and its tiny builder
(tiny.py). Importing the package imports no torch."""

from .family import FluxFamily, size_multiple, transformer_variant

__all__ = ["FluxFamily", "size_multiple", "transformer_variant"]
