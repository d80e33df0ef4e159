"""`optimized(...)`: the effective speed options on a pipeline for one call, and back afterwards.

Pipelines share their components with every other pipeline of the model and stay cached, so
everything set here is undone on exit (processors, memory format, hooks, block forwards); only
compiled code is kept on the model, switched off, to be reused (managers.optimize.compiled).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..denoise import denoiser_of
from .compiled import compiled
from .deepcache import DeepCache
from .options import Effective, device_of, resolve


@contextlib.contextmanager
def optimized(
    pipe: Any, value: Any, default: Any, perf: dict[str, Any], data_dir: Path | None = None, has_lora: bool = False
) -> Iterator[Effective]:
    """Wrap one pipeline call: `with optimized(pipe, req.optimize, settings.optimize, perf, ...) as eff: pipe(...)`.

    Raises ValidationFailed (before touching anything) for options the model cannot take.
    """
    eff = resolve(value, default, pipe, device_of(pipe), has_lora)
    if not eff.active:
        yield eff
        return
    den = denoiser_of(pipe)
    vae = getattr(pipe, "vae", None)
    with contextlib.ExitStack() as stack:
        if eff.attention != "native":
            from diffusers.models.attention_dispatch import attention_backend

            stack.enter_context(attention_backend(eff.attention))
        if eff.channels_last:
            stack.enter_context(_channels_last([den, vae if _is_2d(vae) else None]))
        if eff.fuse_qkv:
            stack.enter_context(_fused([den, vae]))
        if eff.compile:
            stack.enter_context(compiled(den, data_dir, perf))
        if eff.cache is not None:
            stack.enter_context(_step_cache(den, eff.cache, perf))
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
    with _first_block(den, cache["threshold"], perf):
        yield


@contextlib.contextmanager
def _first_block(den: Any, threshold: float, perf: dict[str, Any]) -> Iterator[None]:
    """diffusers' First Block Cache; a pipeline that opens no cache context of its own gets one here."""
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        HookRegistry,
        apply_first_block_cache,
    )
    from diffusers.hooks.first_block_cache import (
        _FBC_BLOCK_HOOK,
        _FBC_LEADER_BLOCK_HOOK,
    )

    # the hook function, not enable_cache: not every transformer has diffusers' CacheMixin
    apply_first_block_cache(den, FirstBlockCacheConfig(threshold=threshold))
    HookRegistry.check_if_exists_or_initialize(den).invalidate_child_registries_cache()  # as enable_cache does
    leader = next(
        (h for m in den.modules() if (reg := getattr(m, "_diffusers_hook", None)) is not None
         for h in [reg.get_hook(_FBC_LEADER_BLOCK_HOOK)] if h is not None),
        None,
    )
    counts = {"calls": 0, "skipped": 0}

    def after(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        counts["calls"] += 1
        if leader is not None and not leader.state_manager.get_state().should_compute:
            counts["skipped"] += 1

    handle = den.register_forward_hook(after, with_kwargs=True)
    if _needs_context(den):
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        _set_cache_context(den, CacheContext("cond"))  # one state across the call; CFG runs batched there
    try:
        yield
    finally:
        handle.remove()
        registry = HookRegistry.check_if_exists_or_initialize(den)
        registry.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=True)
        registry.remove_hook(_FBC_BLOCK_HOOK, recurse=True)
        if hasattr(registry, "invalidate_child_registries_cache"):
            registry.invalidate_child_registries_cache()
        perf["cache_skipped_steps"] = (perf.get("cache_skipped_steps") or 0) + counts["skipped"]


def _needs_context(den: Any) -> bool:
    """Flux and Wan pipelines open `cache_context` around each transformer call; others get one here."""
    return type(den).__name__ not in ("FluxTransformer2DModel", "WanTransformer3DModel")



def runner_wrapper(settings: Any) -> Any:
    """A PipelineRunner wrapper factory: `runner.wrappers.append(runner_wrapper(settings))`."""

    def factory(call: Any) -> contextlib.AbstractContextManager[Effective]:
        req = call.request
        session = getattr(call.ctx, "session", None)
        perf = session.performance if session is not None else {}
        return optimized(call.pipe, getattr(req, "optimize", None), settings.optimize, perf, settings.data_dir, has_lora(req))

    return factory


def has_lora(req: Any) -> bool:
    """The request asks for LoRAs (its list or <lora:…> tags in the prompt)."""
    return bool(getattr(req, "loras", None)) or "<lora:" in (getattr(req, "prompt", "") or "")
