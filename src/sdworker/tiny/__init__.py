"""Tiny random-weight, real-architecture diffusers pipelines (no downloads) for tests and demos.

The arch registry imports without torch; make_tiny_model (torch, diffusers) loads on first use.
"""

from __future__ import annotations

from typing import Any

from .arches import ARCHES, MODEL_ARCHES

__all__ = ["ARCHES", "MODEL_ARCHES", "make_tiny_model"]


def __getattr__(name: str) -> Any:
    if name == "make_tiny_model":
        from .builder import make_tiny_model

        return make_tiny_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
