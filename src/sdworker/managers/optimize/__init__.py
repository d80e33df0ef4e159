"""Speed options for the denoiser (the request's `optimize`): compile, fused QKV, channels-last,
attention backends and step caches, applied around one pipeline call and undone after it."""

from .apply import has_lora, optimized, runner_wrapper
from .options import Effective, attention_backends, cache_kinds, parameters, resolve

__all__ = ["has_lora", "runner_wrapper", "Effective", "attention_backends", "cache_kinds", "optimized", "parameters", "resolve"]
