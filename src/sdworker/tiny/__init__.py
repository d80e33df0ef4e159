"""Tiny random-weight, real-architecture diffusers pipelines (no downloads) for tests and demos."""

from .builder import ARCHES, MODEL_ARCHES, make_tiny_model

__all__ = ["ARCHES", "MODEL_ARCHES", "make_tiny_model"]
