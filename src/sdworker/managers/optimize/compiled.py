"""torch.compile of a denoiser, regional where diffusers knows the repeated blocks.

Compiled blocks are kept on the (shared, cached) model and switched on only for the runs that
ask for them: a plain run after a compiled one runs eager code, and the next compiled run reuses
the compiled code (dynamo recompiles only for new shapes or a changed module structure). Inductor's
on-disk cache lives under --data-dir, so a restarted worker compiles from cache.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .hotswap import hot_swapped

_KEPT = "_sdworker_compiled_call"
# dynamo keeps this many compiled variants per block before it silently runs eager: room for a few
# sizes and LoRA sets (a size seen twice turns dynamic, so sizes cost one extra graph, not one each)
RECOMPILE_LIMIT = 64


def use_cache_dir(data_dir: Path | None) -> None:
    """Point inductor's (and triton's) caches under data_dir, unless the environment already chose.

    Called by the runtime before it imports torch: the first look at inductor's cache dir (diffusers
    importing torchao is enough) writes torch's own default into the environment, after which
    this would change nothing.
    """
    if data_dir is None:
        return
    root = Path(data_dir) / "torch_compile"
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))


def regions(denoiser: Any) -> list[Any]:
    """The modules to compile: diffusers' `_repeated_blocks` of the model; for models that list none
    (SD 3.5, HiDream), the members of its block lists (`transformer_blocks`, `double_stream_blocks`, …),
    so the blocks share compiled code as they do under regional compilation; else the whole model."""
    names = set(getattr(denoiser, "_repeated_blocks", None) or ())
    if names:
        found = [m for m in denoiser.modules() if type(m).__name__ in names]
    else:
        found = [m for name, lst in denoiser.named_children() if name.endswith("blocks") and _is_list(lst) for m in lst]
    return found or [denoiser]


def _is_list(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.ModuleList)


def _stats() -> tuple[float, int]:
    from torch._dynamo.utils import calculate_time_spent, counters

    return calculate_time_spent().get("entire_frame_compile", 0.0), int(counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def compiled(denoisers: list[Any], perf: dict[str, Any]) -> Iterator[None]:
    """Run the denoisers (Wan 2.2: both experts) compiled; put `compile_ms` and `compiled_graphs` in perf."""
    _raise_limit()
    mods = [m for den in denoisers for m in regions(den)]
    for m in mods:
        kept = m.__dict__.get(_KEPT)
        if kept is None:
            m.compile()  # nn.Module.compile: sets m._compiled_call_impl = torch.compile(m._call_impl)
            m.__dict__[_KEPT] = m._compiled_call_impl
        else:
            m._compiled_call_impl = kept
    seconds, graphs = _stats()
    try:
        with contextlib.ExitStack() as swaps:
            for den in denoisers:
                swaps.enter_context(hot_swapped(den))
            yield
    finally:
        for m in mods:
            m._compiled_call_impl = None  # eager again until a run asks for compile
        seconds2, graphs2 = _stats()
        # always on a compiled run: 0 says the compiled code was reused (the bench counts recompiles with it)
        perf["compiled_graphs"] = (perf.get("compiled_graphs") or 0) + graphs2 - graphs
        if graphs2 > graphs or seconds2 > seconds:
            perf["compile_ms"] = round((perf.get("compile_ms") or 0.0) + (seconds2 - seconds) * 1000, 2)


def _raise_limit() -> None:
    """Lift dynamo's per-code recompile limit to RECOMPILE_LIMIT (never lower a larger one set by the host)."""
    import torch._dynamo.config as cfg

    for name in ("recompile_limit", "cache_size_limit"):  # the newer name first; torch keeps the old as an alias
        if hasattr(cfg, name):
            if getattr(cfg, name) < RECOMPILE_LIMIT:
                setattr(cfg, name, RECOMPILE_LIMIT)
            return
