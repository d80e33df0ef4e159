"""The lower-memory mode of the out-of-memory retry (managers.runner), and its fault drill.

The lower-memory mode is what diffusers offers without changing the result's arithmetic much:
attention slicing, VAE slicing and tiling, and on CUDA model CPU offload (each component visits
the GPU only while it runs). The mode is taken off again after the retry, so the next job runs
at full speed; model offload's hooks are removed and the cache learns where the weights are.

`SDWORKER_FAULT_OOM_AT_STEP=N[:K]` (tests, fault drills) raises a CUDA-style out-of-memory
error at denoising step N, the first K times (default 1), so the path can be exercised on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any, Iterator

from .memory import MemoryManager

log = logging.getLogger(__name__)


@contextlib.contextmanager
def low_memory_mode(pipe: Any, device: str, memory: MemoryManager, keys: list[str]) -> Iterator[list[str]]:
    """Switch a pipeline to its lower-memory settings for one call; yields what was switched on."""
    used: list[str] = []
    for name, fn in (("attention_slicing", "enable_attention_slicing"), ("vae_slicing", "enable_vae_slicing"), ("vae_tiling", "enable_vae_tiling")):
        if hasattr(pipe, fn) or hasattr(getattr(pipe, "vae", None), fn.replace("_vae", "")):
            _call(pipe, fn)
            used.append(name)
    offloaded = False
    if device.startswith("cuda") and hasattr(pipe, "enable_model_cpu_offload"):
        pipe.enable_model_cpu_offload(device=device)
        offloaded = True
        used.append("model_cpu_offload")
    try:
        yield used
    finally:
        if offloaded:
            pipe.remove_all_hooks()
        for fn in ("disable_attention_slicing", "disable_vae_slicing", "disable_vae_tiling"):
            _call(pipe, fn)
        memory.resync(keys)


def _call(pipe: Any, fn: str) -> None:
    target = getattr(pipe, fn, None)
    if target is None:  # newer diffusers keep slicing/tiling on the VAE itself
        target = getattr(getattr(pipe, "vae", None), fn.replace("_vae", ""), None)
    if target is not None:
        target()


class OomInjector:
    """The fault drill: an OutOfMemoryError at a chosen step, a chosen number of times."""

    def __init__(self, spec: str | None = None):
        spec = spec if spec is not None else os.environ.get("SDWORKER_FAULT_OOM_AT_STEP", "")
        self.step: int | None = None
        self.left = 0
        self._lock = threading.Lock()
        if spec:
            step, _, times = spec.partition(":")
            self.step, self.left = int(step), int(times or 1)

    def maybe_raise(self, step: int) -> None:
        if self.step is None or step != self.step:
            return
        with self._lock:
            if self.left <= 0:
                return
            self.left -= 1
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory (injected at step {step} by SDWORKER_FAULT_OOM_AT_STEP)")
