"""HiDream-I1 (Full, Dev, Fast): the family's request mapping (family.py) and its tiny builder
(tiny.py). Importing the package imports no torch."""

from .family import HiDreamFamily, output_size, scheduler_from, variant

__all__ = ["HiDreamFamily", "output_size", "scheduler_from", "variant"]
