"""Per-request precision and memory controls (`precision` in a generation request).

The components of a pipeline are shared cache entries, so a request's settings are put on for
its run and taken off after, restoring what was there before (a model switched to attention
slicing by `model.optimize_model` stays sliced):

- dtype: the run's pipeline is built in that dtype (the cache keys entries on it, so fp32 and
  bf16 copies of a model can both be cached). fp16 on a CPU works for these architectures but is
  slow; bf16 is the CPU's half precision.
- attention_slicing: the UNet's attention processors are saved, sliced, then set back.
- vae_slicing / vae_tiling: the VAE's flags are saved, set, then set back.
- cpu_offload ("model" or "sequential"): diffusers' offload hooks around one pipeline call,
  removed after it; then the memory cache learns where the weights are. CUDA only.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

from ..errors import ValidationFailed
from . import weights
from .memory import MemoryManager


def check(opts: Any, device: str | None, dtype: str, warnings: list[str], model_format: str | None = None) -> None:
    """Refuse what cannot run on `device` (None: not known yet); warn about what runs badly."""
    found = weights.problems(opts, device, model_format)
    if device is not None and opts.cpu_offload != "none" and not device.startswith("cuda"):
        msg = f"cpu_offload {opts.cpu_offload!r} needs a CUDA device; this request runs on {device}"
        found.insert(0, {"path": "precision.cpu_offload", "message": msg})
    if found:
        raise ValidationFailed(f"{found[0]['path']}: {found[0]['message']}", found)
    if device is None:
        return
    if dtype == "fp16" and device == "cpu":
        warnings.append("fp16 on a CPU is slow (no fast half-precision kernels); bf16 or fp32 run faster there")


def _distinct(objs: Iterable[Any]) -> list[Any]:
    seen: dict[int, Any] = {}
    for o in objs:
        if o is not None:
            seen.setdefault(id(o), o)
    return list(seen.values())


@contextlib.contextmanager
def shared_settings(pipes: list[Any], opts: Any) -> Iterator[list[str]]:
    """Attention slicing and VAE slicing/tiling on the pipelines' UNets and VAEs for one run."""
    applied: list[str] = []
    unets = _distinct(getattr(p, "unet", None) for p in pipes) if opts.attention_slicing else []
    vaes = _distinct(getattr(p, "vae", None) for p in pipes) if opts.vae_slicing or opts.vae_tiling else []
    saved_procs = [(u, dict(u.attn_processors)) for u in unets if hasattr(u, "attn_processors")]
    saved_flags = [(v, getattr(v, "use_slicing", False), getattr(v, "use_tiling", False)) for v in vaes]
    try:
        if saved_procs:
            for p in pipes:
                if getattr(p, "unet", None) is not None:
                    p.enable_attention_slicing()
            applied.append("attention_slicing")
        for v, _, _ in saved_flags:
            if opts.vae_slicing:
                v.enable_slicing()
            if opts.vae_tiling:
                v.enable_tiling()
        applied += [n for n in ("vae_slicing", "vae_tiling") if getattr(opts, n) and saved_flags]
        yield applied
    finally:
        for unet, procs in saved_procs:
            unet.set_attn_processor(procs)
        for v, slicing, tiling in saved_flags:
            v.use_slicing, v.use_tiling = slicing, tiling


@contextlib.contextmanager
def offloaded(pipe: Any, mode: str, device: str, memory: MemoryManager, keys: Iterable[str]) -> Iterator[None]:
    """diffusers' model, sequential or group offload around one call ("none": nothing)."""
    if mode == "none":
        yield
        return
    if mode == "group":
        import torch

        memory.place(list(keys), "cpu")  # group offload moves each block onto the GPU as it runs
        pipe.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    else:
        getattr(pipe, f"enable_{mode}_cpu_offload")(device=device)
    try:
        yield
    finally:
        if mode == "group":
            _remove_group_offload(pipe)
        else:
            pipe.remove_all_hooks()
        memory.resync(list(keys))


def _remove_group_offload(pipe: Any) -> None:
    """Take the group-offload hooks off every model of the pipeline (weights are left on the CPU)."""
    import torch
    from diffusers.hooks import HookRegistry

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for module in component.modules():
                registry = getattr(module, "_diffusers_hook", None)
                if isinstance(registry, HookRegistry):
                    for name in list(registry.hooks):
                        if "group_offloading" in name:
                            registry.remove_hook(name, recurse=False)
