"""The request's `optimize` field: speed options for the denoiser, checked before a job runs.

Only the shape is checked here; whether an attention backend is installed or a cache kind fits
the model's family is known once the model is loaded (managers.optimize).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from .base import Params

CACHE_KINDS = ("deepcache", "first_block", "taylorseer")


class CacheOptions(Params):
    """Step caching: reuse the denoiser's work of an earlier step instead of recomputing it."""

    kind: Literal["deepcache", "first_block", "taylorseer"] = Field(
        description="deepcache: UNet families (SD 1.5, SDXL, Pony) reuse the deep UNet features and recompute only the "
        "shallow blocks between full steps; first_block: Flux, SD3 and Wan skip the remaining blocks while the first "
        "block's output barely changes (diffusers' First Block Cache); taylorseer: every transformer family (Flux, SD3, "
        "HiDream, Wan) runs full calls on a fixed schedule and extrapolates the output between them (diffusers' TaylorSeer)"
    )
    interval: int = Field(default=3, ge=2, le=10, description="deepcache, taylorseer: one full denoiser call every N calls")
    branch: int = Field(default=0, ge=0, le=3, description="deepcache: how many layers of the outermost up block rerun on a cached call, less one (0: only the last, as DeepCache's finest branch)")
    start: int | None = Field(default=None, ge=0, le=1000, description="deepcache, taylorseer: the first N denoiser calls always run in full; absent: 1 for deepcache, 3 for taylorseer")
    order: int = Field(default=1, ge=1, le=2, description="taylorseer: the order of the Taylor series that extrapolates the output")
    threshold: float = Field(default=0.08, gt=0.0, le=1.0, description="first_block: relative change of the first block's residual under which the rest is skipped")

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, v: Any) -> Any:
        if isinstance(v, str):
            key = v.strip().lower().replace("-", "_").replace(" ", "_")
            return {"first_block_cache": "first_block", "fbc": "first_block", "deep_cache": "deepcache", "taylor_seer": "taylorseer"}.get(key, key)
        return v


class OptimizeOptions(Params):
    """Each speed option by itself; "max" and "none" name whole sets (managers.optimize)."""

    compile: bool = Field(default=False, description="torch.compile the denoiser (regional: its repeated blocks); compiled once per model and shape, kept, and cached under --data-dir")
    fuse_qkv: bool = Field(default=False, description="fuse the attention q/k/v projections of the denoiser and VAE (skipped while LoRAs are active)")
    channels_last: bool = Field(default=False, description="channels-last memory format for the UNet and the 2D VAE")
    attention: str | None = Field(default=None, description="an attention backend of diffusers' dispatcher (native, flash, sage, xformers, ...); absent: native")
    cache: CacheOptions | None = Field(default=None, description="step caching {kind, ...parameters}; absent: none")

    @field_validator("cache", mode="before")
    @classmethod
    def _cache(cls, v: Any) -> Any:
        if isinstance(v, str):
            return None if v.strip().lower() in ("", "none", "off") else {"kind": v}
        return v

    @field_validator("attention", mode="before")
    @classmethod
    def _attention(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower()
            return None if v in ("", "default", "auto") else v
        return v


Optimize = Literal["none", "max"] | OptimizeOptions

OPTIMIZE_DESCRIPTION = (
    '"none", "max" (the fastest combination that keeps images close, per family) or {compile, fuse_qkv, '
    'channels_last, attention, cache}; absent: the worker default (--optimize)'
)


def normalize_optimize(v: Any) -> Any:
    """Case-fold the shorthands; a JSON-text object (flag or env value) becomes an object."""
    if isinstance(v, str):
        text = v.strip()
        if text.startswith("{"):
            import json

            return json.loads(text)
        return text.lower()
    return v
