"""LoRAManager: LoRA files read once into the RAM cache, tracked by content.

Loading and tracking only: applying them to a pipeline (named adapters, set_adapters) is the
adapters layer's job, which reads the state dicts from here so a LoRA is never read twice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..errors import ModelLoadFailed
from . import fingerprint
from .memory import CacheEntry, MemoryManager, module_bytes

log = logging.getLogger(__name__)


class LoRAManager:
    def __init__(self, memory: MemoryManager, allow_pickle: bool = False):
        self.memory = memory
        self.allow_pickle = allow_pickle
        self.disk_loads = 0

    def load(self, path: Path, lora_id: str, base_model: str = "unknown") -> CacheEntry:
        try:
            key = fingerprint.of_file(path, "lora")
        except OSError as exc:
            raise ModelLoadFailed(f"LoRA {lora_id!r} cannot be read: {exc.strerror or exc}") from exc
        hit = self.memory.get(key)
        if hit is not None:
            hit.model_ids.add(lora_id)
            return hit
        t0 = time.perf_counter()
        state = self._read(path, lora_id)
        self.disk_loads += 1
        first = next(iter(state.values()), None)
        dtype = str(getattr(first, "dtype", "-")).replace("torch.", "")
        log.info("read LoRA %s (%d tensors) in %.0f ms", lora_id, len(state), (time.perf_counter() - t0) * 1000)
        entry = CacheEntry(key, "lora", state, module_bytes(state), "cpu", dtype, str(path), {lora_id})
        return self.memory.put(entry)

    def _read(self, path: Path, lora_id: str) -> dict[str, Any]:
        try:
            if path.suffix.lower() == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(path), device="cpu")
            if not self.allow_pickle:
                raise ModelLoadFailed(f"LoRA {lora_id!r} is a pickle file; start the worker with --allow-pickle to load it")
            import torch

            state = torch.load(str(path), map_location="cpu", weights_only=True)
            return state.get("state_dict", state) if isinstance(state, dict) else {}
        except ModelLoadFailed:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadFailed(f"LoRA {lora_id!r} could not be read from {path.name}: {type(exc).__name__}: {exc}") from exc

    def loaded(self) -> list[CacheEntry]:
        return [e for e in self.memory.entries() if e.component == "lora"]
