"""What a request's `optimize` means for one pipeline: the effective options, checked against the model.

`resolve` is pure (it changes nothing): the runner applies what it returns, and the result's
`parameters` show the same value, so what a host reads is what ran.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ...errors import ValidationFailed
from ...schemas.optimize import CacheOptions, OptimizeOptions, normalize_optimize
from ..denoise import denoiser_of
from .dit_cache import first_block_supported, taylorseer_supported

UNET_CLASSES = ("UNet2DConditionModel",)
# Backends usable without a GPU; the rest of diffusers' dispatcher needs CUDA (and often a package).
CPU_BACKENDS = ("native", "_native_math")
# "max" per kind of denoiser: the options that keep images close to plain (docs/benchmarks.md).
MAX_UNET_CACHE = {"kind": "deepcache", "interval": 3, "branch": 0, "start": 1}
# DiTs: First Block Cache where it fits (it skips only when a step barely changes), else TaylorSeer
# on a cautious schedule (HiDream): a full call every other call after three full ones.
MAX_DIT_CACHE = {"kind": "first_block", "threshold": 0.05}
MAX_TAYLORSEER = {"kind": "taylorseer", "interval": 2, "start": 3, "order": 1}
# where a cache kind's `start` is absent
DEFAULT_START = {"deepcache": 1, "taylorseer": 3}


@dataclass(frozen=True)
class Effective:
    """The options one pipeline call runs with."""

    preset: str = "none"  # none | max | custom
    compile: bool = False
    fuse_qkv: bool = False
    channels_last: bool = False
    attention: str = "native"
    cache: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=())  # why an asked option was left off

    @property
    def active(self) -> bool:
        return self.compile or self.fuse_qkv or self.channels_last or self.attention != "native" or self.cache is not None

    def describe(self) -> dict[str, Any]:
        """The result's `parameters.optimize`."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        if not out["notes"]:
            del out["notes"]
        return out


def is_unet(denoiser: Any) -> bool:
    return type(denoiser).__name__ in UNET_CLASSES


def cache_kinds(denoiser: Any) -> list[str]:
    """The step caches this denoiser can take."""
    if is_unet(denoiser):
        return ["deepcache"]
    return [k for k, fits in (("first_block", first_block_supported), ("taylorseer", taylorseer_supported)) if fits(denoiser)]


def max_cache(denoiser: Any) -> dict[str, Any] | None:
    kinds = cache_kinds(denoiser)
    for kind, cache in (("deepcache", MAX_UNET_CACHE), ("first_block", MAX_DIT_CACHE), ("taylorseer", MAX_TAYLORSEER)):
        if kind in kinds:
            return dict(cache)
    return None


# SD3's fused processor drops the q/k norms of SD 3.5: its images change, so it is not fused.
NO_FUSE = ("SD3Transformer2DModel",)


def fuse_supported(denoiser: Any) -> bool:
    if not hasattr(denoiser, "fuse_qkv_projections") or type(denoiser).__name__ in NO_FUSE:
        return False
    procs = getattr(denoiser, "attn_processors", {}) or {}
    return not any("Added" in type(p).__name__ for p in procs.values())


def attention_backends(device: str) -> list[str]:
    """Backends of diffusers' attention dispatcher that can run here (installed, and a GPU where they need one)."""
    try:
        from diffusers.models.attention_dispatch import (
            AttentionBackendName,
            _check_attention_backend_requirements,
        )
    except ImportError:
        return ["native"]
    names = []
    for b in AttentionBackendName:
        if b.value.endswith("_hub"):
            continue  # downloads a kernel from the Hub at first use: not on a worker
        if not str(device).startswith("cuda") and b.value not in CPU_BACKENDS:
            continue
        try:
            _check_attention_backend_requirements(b)
        except (RuntimeError, ImportError, ValueError):
            continue
        names.append(b.value)
    return names


def _parse(value: Any) -> str | OptimizeOptions:
    value = normalize_optimize(value)
    if isinstance(value, OptimizeOptions) or value in ("none", "max"):
        return value
    return OptimizeOptions.model_validate(value)


def device_of(pipe: Any) -> str:
    """Where the pipeline computes (its execution device, also under CPU offload)."""
    try:
        return str(pipe._execution_device)
    except Exception:  # noqa: BLE001 - a pipeline without modules: nothing to optimize anyway
        return "cpu"


def parameters(pipe: Any, value: Any, default: Any, has_lora: bool = False) -> dict[str, Any]:
    """The result's `parameters.optimize` for a run on `pipe`."""
    eff = resolve(value, default, pipe, device_of(pipe), has_lora)
    out = eff.describe()
    from .hotswap import NOTE_ATTR  # why the compiled run could not hot-swap its LoRAs

    note = getattr(denoiser_of(pipe), "__dict__", {}).get(NOTE_ATTR) if eff.compile and has_lora else None
    if note:
        out["notes"] = [*out.get("notes", []), note]
    return out


def resolve(value: Any, default: Any, pipe: Any, device: str, has_lora: bool = False, path: str = "data.optimize") -> Effective:
    """The effective options of `value` (the request's; None: the worker's `default`) on this pipeline.

    Raises ValidationFailed for an attention backend that cannot run here or a cache kind the
    model's denoiser cannot take; "max" only ever picks what fits.
    """
    chosen = value if value is not None else default
    if chosen is None:
        return Effective()
    opts = _parse(chosen)
    den = denoiser_of(pipe)
    cuda = str(device).startswith("cuda")
    notes: list[str] = []
    if opts == "none" or den is None:
        return Effective()
    if opts == "max":
        cache = max_cache(den)
        # On a GPU: compile, fused projections and channels-last (diffusion-fast's recipe) plus the cache.
        # On a CPU only the cache: compiling takes minutes, and fusing or converting the memory format
        # for each request costs more there than it saves (docs/benchmarks.md).
        return Effective(
            preset="max",
            compile=cuda,
            fuse_qkv=cuda and fuse_supported(den) and not has_lora,
            channels_last=cuda and is_unet(den),
            cache=cache,
        )
    assert isinstance(opts, OptimizeOptions)
    attention = opts.attention or "native"
    if attention != "native":
        available = attention_backends(device)
        if attention not in available:
            raise ValidationFailed(
                f"{path}.attention: {attention!r} is not available here; available: {', '.join(available)}",
                [{"path": f"{path}.attention", "message": f"not available; one of {', '.join(available)}"}],
            )
        if is_unet(den):  # the UNet's attention processors call torch SDPA directly, not diffusers' dispatcher
            attention = "native"
            notes.append("attention backends apply to transformer denoisers; UNet attention runs on torch SDPA")
    fuse = opts.fuse_qkv
    if fuse and has_lora:
        fuse = False
        notes.append("fuse_qkv left off: LoRAs are active (fused projections would drop them)")
    elif fuse and not fuse_supported(den):
        fuse = False
        notes.append(f"fuse_qkv left off: {type(den).__name__} cannot fuse its projections")
    cache = _cache(opts.cache, den, path)
    return Effective(
        preset="custom",
        compile=opts.compile,
        fuse_qkv=fuse,
        channels_last=opts.channels_last and is_unet(den),
        attention=attention,
        cache=cache,
        notes=tuple(notes) + (("channels_last applies to UNets only",) if opts.channels_last and not is_unet(den) else ()),
    )


def _cache(cache: CacheOptions | None, den: Any, path: str) -> dict[str, Any] | None:
    if cache is None:
        return None
    kinds = cache_kinds(den)
    if cache.kind not in kinds:
        fits = ", ".join(kinds) if kinds else "none"
        raise ValidationFailed(
            f"{path}.cache.kind: {cache.kind!r} does not fit {type(den).__name__}; this model takes: {fits}",
            [{"path": f"{path}.cache.kind", "message": f"this model takes: {fits}"}],
        )
    start = cache.start if cache.start is not None else DEFAULT_START.get(cache.kind, 1)
    if cache.kind == "taylorseer" and start < 1:  # it extrapolates from full calls, so the first must be one
        raise ValidationFailed(
            f"{path}.cache.start: taylorseer needs at least one full call first (start >= 1)",
            [{"path": f"{path}.cache.start", "message": "taylorseer: must be at least 1"}],
        )
    if cache.kind == "deepcache":
        return {"kind": "deepcache", "interval": cache.interval, "branch": cache.branch, "start": start}
    if cache.kind == "taylorseer":
        return {"kind": "taylorseer", "interval": cache.interval, "start": start, "order": cache.order}
    return {"kind": "first_block", "threshold": cache.threshold}
