"""Tiny random-weight, real-architecture diffusers pipelines (no downloads) for tests and demos."""

from .builder import ARCHES, make_tiny_model

__all__ = ["ARCHES", "make_tiny_model"]
