"""LoRAManager: LoRA files read once into the RAM cache, tracked by content.

Loading and tracking only: applying them to a pipeline (named adapters, set_adapters) is the
adapters layer's job, which reads the state dicts from here so a LoRA is never read twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelLoadFailed
from . import fingerprint
from .cached_load import CachedLoader
from .memory import CacheEntry, MemoryManager, module_bytes


class LoRAManager(CachedLoader):
    def __init__(self, memory: MemoryManager, allow_pickle: bool = False):
        self.memory = memory
        self.allow_pickle = allow_pickle
        self.disk_loads = 0

    def load(self, path: Path, lora_id: str, base_model: str = "unknown") -> CacheEntry:
        try:
            key = fingerprint.of_file(path, "lora")
        except OSError as exc:
            raise ModelLoadFailed(f"LoRA {lora_id!r} cannot be read: {exc.strerror or exc}") from exc
        return self.cached(
            key, lora_id, lambda: self._read(path, lora_id), lambda state: self._entry(key, state, path, lora_id),
            label=lambda state: f"LoRA {lora_id} ({len(state)} tensors)",
            failure=lambda exc: f"LoRA {lora_id!r} could not be read from {path.name}: {type(exc).__name__}: {exc}",
        )

    @staticmethod
    def _entry(key: str, state: dict[str, Any], path: Path, lora_id: str) -> CacheEntry:
        first = next(iter(state.values()), None)
        dtype = str(getattr(first, "dtype", "-")).replace("torch.", "")
        return CacheEntry(key, "lora", state, module_bytes(state), "cpu", dtype, str(path), {lora_id})

    def _read(self, path: Path, lora_id: str) -> dict[str, Any]:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if not self.allow_pickle:
            raise ModelLoadFailed(f"LoRA {lora_id!r} is a pickle file; start the worker with --allow-pickle to load it")
        import torch

        state = torch.load(str(path), map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else {}

    def loaded(self) -> list[CacheEntry]:
        return [e for e in self.memory.entries() if e.component == "lora"]
