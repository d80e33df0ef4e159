"""Step caches for transformer denoisers (Flux, SD3, HiDream, Wan), both diffusers' own hooks.

- first_block: diffusers' First Block Cache. When the first block's residual barely changes from
  the last computed call, every later block answers with its cached residual. SD 3.5's last joint
  block returns no text stream (`context_pre_only`), which the hook subtracts from, so the cached
  span stops before such trailing blocks and they always run: one block in 24 or 38.
- taylorseer: diffusers' TaylorSeer in its light form. Full calls run on a fixed schedule; between
  them every block returns zeros at once and the output projection is extrapolated from the last
  full calls (a Taylor series in the step). It needs nothing from the block's return shape, so it
  fits HiDream, whose blocks change the sequence length between the first and the last.

The hooks are put on for one pipeline call and taken off after it (the model is shared and cached).
A pipeline that opens no `cache_context` of its own (SD3, HiDream, Flux Fill) gets one context for
the call at the denoiser's first call; its CFG runs batched, one denoiser call per step.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

_OUTPUT_LAYERS = ("proj_out", "final_layer")


def block_lists(den: Any) -> list[tuple[str, Any]]:
    """The denoiser's top-level lists of blocks, in forward order (Flux: double then single)."""
    import torch

    return [(n, m) for n, m in den.named_children() if "block" in n and isinstance(m, torch.nn.ModuleList) and len(m)]


def output_layer(den: Any) -> str | None:
    """The layer whose output TaylorSeer extrapolates: the last one before unpatchifying."""
    import torch

    return next((n for n in _OUTPUT_LAYERS if isinstance(getattr(den, n, None), torch.nn.Module)), None)


def _cached_span(den: Any) -> list[Any]:
    """The blocks First Block Cache may hook: every block but trailing ones that return no text stream."""
    blocks = [b for _, lst in block_lists(den) for b in lst]
    while blocks and getattr(blocks[-1], "context_pre_only", False):
        blocks.pop()
    return blocks


def first_block_supported(den: Any) -> bool:
    """diffusers' First Block Cache knows the block classes of the cached span (Flux, SD3, Wan; not HiDream's)."""
    try:
        from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
        from diffusers.hooks._helpers import TransformerBlockRegistry
    except ImportError:
        return False
    lists = block_lists(den)
    span = _cached_span(den)
    if len(span) < 2 or any(n not in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS for n, _ in lists):
        return False
    try:
        for cls in {type(b) for b in span}:
            TransformerBlockRegistry.get(cls)
    except ValueError:
        return False
    return True


def taylorseer_supported(den: Any) -> bool:
    try:
        from diffusers.hooks import taylorseer_cache  # noqa: F401 - diffusers >= 0.36
    except ImportError:
        return False
    return bool(block_lists(den)) and output_layer(den) is not None


class _Span:
    """Stand-in parent for apply_first_block_cache: it walks named children, so it is shown only the cached span."""

    def __init__(self, blocks: list[Any]) -> None:
        import torch

        self.module = torch.nn.Module()
        self.module.transformer_blocks = torch.nn.ModuleList(blocks)  # holds references; the blocks stay in the model


@contextlib.contextmanager
def first_block(den: Any, threshold: float, perf: dict[str, Any]) -> Iterator[None]:
    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache
    from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK

    span = _cached_span(den)
    apply_first_block_cache(_Span(span).module, FirstBlockCacheConfig(threshold=threshold))
    leader = HookRegistry.check_if_exists_or_initialize(span[0]).get_hook(_FBC_LEADER_BLOCK_HOOK)

    def skipped() -> bool:
        return not leader.state_manager.get_state().should_compute

    try:
        with _hooked(den, skipped, leader.state_manager, perf):
            yield
    finally:
        for block in span:
            registry = HookRegistry.check_if_exists_or_initialize(block)
            registry.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=False)
            registry.remove_hook(_FBC_BLOCK_HOOK, recurse=False)


@contextlib.contextmanager
def taylorseer(den: Any, interval: int, start: int, order: int, perf: dict[str, Any]) -> Iterator[None]:
    import torch
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK, TaylorSeerCacheConfig, apply_taylorseer_cache

    out = output_layer(den)
    # trailing blocks without a text stream return None there, which the hook cannot record: they run
    skip = [f"{name}.{i}" for name, lst in block_lists(den) for i, b in enumerate(lst) if not getattr(b, "context_pre_only", False)]
    config = TaylorSeerCacheConfig(
        cache_interval=interval,
        disable_cache_before_step=start,
        max_order=order,
        taylor_factors_dtype=torch.float32,  # only the output layer's factors are kept: small, so keep them exact
        skip_predict_identifiers=[re.escape(n) for n in skip],
        cache_identifiers=[re.escape(out or "")],
    )
    apply_taylorseer_cache(den, config)
    predictor = HookRegistry.check_if_exists_or_initialize(getattr(den, out or "")).get_hook(_TAYLORSEER_CACHE_HOOK)

    def skipped() -> bool:
        state = predictor.state_manager.get_state()
        return state.last_update_step != state.current_step  # this call's output was extrapolated

    try:
        with _hooked(den, skipped, predictor.state_manager, perf):
            yield
    finally:
        HookRegistry.check_if_exists_or_initialize(den).remove_hook(_TAYLORSEER_CACHE_HOOK, recurse=True)


@contextlib.contextmanager
def _hooked(den: Any, skipped: Any, probe: Any, perf: dict[str, Any]) -> Iterator[None]:
    """Count the cached calls into perf; open a cache context where the pipeline has none; tidy the registry after.

    `probe`: a StateManager of the new hooks; no context on it at a denoiser call means the
    pipeline opens none, so one context ("cond") is set for the whole call.
    """
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    registry = HookRegistry.check_if_exists_or_initialize(den)
    if hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()  # as enable_cache does: the new hooks must be found
    counts = {"skipped": 0}

    def after(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if skipped():
            counts["skipped"] += 1

    def before(module: Any, args: Any) -> None:
        if getattr(probe, "_context", None) is None:
            _set_cache_context(den, CacheContext("cond"))

    handles = [den.register_forward_pre_hook(before), den.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        if hasattr(registry, "invalidate_child_registries_cache"):
            registry.invalidate_child_registries_cache()
        perf["cache_skipped_steps"] = (perf.get("cache_skipped_steps") or 0) + counts["skipped"]
