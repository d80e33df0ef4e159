"""`optimized(...)`: the effective speed options on a pipeline for one call, and back afterwards.

Pipelines share their components with every other pipeline of the model and stay cached, so
everything set here is undone on exit (processors, memory format, hooks, block forwards); only
compiled code is kept on the model, switched off, to be reused (managers.optimize.compiled).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..denoise import denoiser_of, denoisers_of
from .compiled import compiled
from .deepcache import DeepCache
from .dit_cache import first_block, taylorseer
from .options import Effective, device_of, resolve


@contextlib.contextmanager
def optimized(
    pipe: Any, value: Any, default: Any, perf: dict[str, Any], has_lora: bool = False
) -> Iterator[Effective]:
    """Wrap one pipeline call: `with optimized(pipe, req.optimize, settings.optimize, perf, ...) as eff: pipe(...)`.

    Raises ValidationFailed (before touching anything) for options the model cannot take.
    """
    eff = resolve(value, default, pipe, device_of(pipe), has_lora)
    if not eff.active:
        yield eff
        return
    den = denoiser_of(pipe)
    dens = denoisers_of(pipe)  # Wan 2.2: both experts get the same options
    vae = getattr(pipe, "vae", None)
    with contextlib.ExitStack() as stack:
        if eff.attention != "native":
            from diffusers.models.attention_dispatch import attention_backend

            stack.enter_context(attention_backend(eff.attention))
        if eff.channels_last:
            stack.enter_context(_channels_last([den, vae if _is_2d(vae) else None]))
        if eff.fuse_qkv:
            stack.enter_context(_fused([*dens, vae]))
        if eff.compile:
            stack.enter_context(compiled(dens, perf))
        if eff.cache is not None:
            for d in dens:
                stack.enter_context(_step_cache(d, eff.cache, perf))
        yield eff


def _is_2d(vae: Any) -> bool:
    """A 2D VAE (SD, SDXL, Flux, SD3); Wan's is 3D, which channels_last does not cover."""
    return vae is not None and type(vae).__name__ == "AutoencoderKL"


@contextlib.contextmanager
def _channels_last(modules: list[Any]) -> Iterator[None]:
    import torch

    done = [m for m in modules if m is not None]
    for m in done:
        m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m in done:
            m.to(memory_format=torch.contiguous_format)  # plain runs stay bit-identical to before


@contextlib.contextmanager
def _fused(modules: list[Any]) -> Iterator[None]:
    done = []
    for m in modules:
        if m is None or not hasattr(m, "fuse_qkv_projections"):
            continue
        try:
            m.fuse_qkv_projections()
        except ValueError:  # e.g. added KV projections: diffusers refuses, the model stays as it was
            continue
        done.append(m)
    try:
        yield
    finally:
        for m in done:
            m.unfuse_qkv_projections()
            _drop_fused_weights(m)


def _drop_fused_weights(model: Any) -> None:
    """Free the concatenated q/k/v weights unfusing leaves behind (a fresh fuse rebuilds them from q, k, v)."""
    for mod in model.modules():
        if getattr(mod, "fused_projections", False):
            for name in ("to_qkv", "to_kv", "to_added_qkv"):
                if name in mod._modules:
                    del mod._modules[name]
            mod.fused_projections = False


@contextlib.contextmanager
def _step_cache(den: Any, cache: dict[str, Any], perf: dict[str, Any]) -> Iterator[None]:
    if cache["kind"] == "deepcache":
        with DeepCache(den, cache["interval"], cache["branch"], cache["start"]) as dc:
            try:
                yield
            finally:
                perf["cache_skipped_steps"] = (perf.get("cache_skipped_steps") or 0) + dc.skipped
        return
    if cache["kind"] == "taylorseer":
        with taylorseer(den, cache["interval"], cache["start"], cache["order"], perf):
            yield
        return
    with first_block(den, cache["threshold"], perf):
        yield


def runner_wrapper(settings: Any) -> Any:
    """A PipelineRunner wrapper factory: `runner.wrappers.append(runner_wrapper(settings))`."""

    def factory(call: Any) -> contextlib.AbstractContextManager[Effective]:
        req = call.request
        session = getattr(call.ctx, "session", None)
        perf = session.performance if session is not None else {}
        return optimized(call.pipe, getattr(req, "optimize", None), settings.optimize, perf, has_lora(req))

    return factory


def has_lora(req: Any) -> bool:
    """The request asks for LoRAs (its list or <lora:…> tags in the prompt)."""
    return bool(getattr(req, "loras", None)) or "<lora:" in (getattr(req, "prompt", "") or "")
