"""MemoryManager: the RAM and VRAM caches of loaded components, with byte budgets.

Every loaded weight-bearing component (UNet, VAE, text encoder, LoRA tensors, ...) is one
`CacheEntry`, keyed by its content identity, so two pipelines that use the same weights hold one
object. An entry lives on one device: "cpu" (the RAM cache) or "cuda:N" (the VRAM cache).

- RAM over budget: the least recently used unpinned entries on "cpu" are dropped.
- VRAM over budget: unpinned entries on the GPU are offloaded to RAM, smallest first (cheap to
  bring back, and the big UNet of the next job stays), before anything is evicted.
- Pinned entries (what a running job uses) are never moved or dropped.

Listeners hear of every eviction, so the pipeline manager can drop pipelines built on it.
No torch at import: modules are moved through their own `.to()`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MB = 2**20
RAM_RESERVE = 4 * 2**30  # left to the OS, the host and activations
VRAM_RESERVE = 1536 * MB  # activations, the CUDA context, fragmentation


@dataclass
class CacheEntry:
    key: str  # content identity (see components.fingerprint)
    component: str  # unet, vae, text_encoder, tokenizer, lora, ...
    obj: Any
    nbytes: int
    device: str  # "cpu" or "cuda:N"
    dtype: str
    source: str  # the file or folder it came from
    model_ids: set[str] = field(default_factory=set)  # models that use it (sharing shows here)
    last_used: float = field(default_factory=time.time)
    pins: int = 0
    loads: int = 1  # times it was read from disk (stays 1 while cached)

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "component": self.component,
            "model_ids": sorted(self.model_ids),
            "device": self.device,
            "dtype": self.dtype,
            "bytes": self.nbytes,
            "mb": round(self.nbytes / MB, 2),
            "last_used": _iso(self.last_used),
            "pinned": self.pins > 0,
            "source": self.source,
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def tensor_bytes(t: Any) -> int:
    """Bytes a tensor really holds. Wrapper subclasses (torchao's quantized weights) report their
    logical dtype's size, so they are counted by the tensors they wrap (int8 data + scales)."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None:
        names, _ctx = t.__tensor_flatten__()
        return sum(tensor_bytes(inner) for n in names if hasattr(inner := getattr(t, n, None), "element_size"))
    return t.numel() * t.element_size()


def module_bytes(obj: Any) -> int:
    """Bytes of a module's parameters and buffers (0 for things without tensors)."""
    total = 0
    for getter in ("parameters", "buffers"):
        fn = getattr(obj, getter, None)
        if fn is None:
            continue
        for t in fn():
            total += tensor_bytes(t)
    if isinstance(obj, dict):  # a state dict (LoRA tensors)
        total += sum(tensor_bytes(t) for t in obj.values() if hasattr(t, "element_size"))
    return total


def default_ram_budget() -> int:
    import psutil

    total = psutil.virtual_memory().total
    return max(512 * MB, int(total - RAM_RESERVE) if total > 2 * RAM_RESERVE else total // 2)


class MemoryManager:
    def __init__(self, ram_budget: int | None = None, vram_budget: int | None = None):
        self._lock = threading.RLock()
        self._entries: dict[str, CacheEntry] = {}
        self._ram_budget = ram_budget  # None: from the machine's RAM, decided on first use
        self.vram_budget = vram_budget  # None: decided from free VRAM when the GPU is first used
        self._listeners: list[Callable[[CacheEntry], None]] = []
        self.evictions = 0
        self.offloads = 0

    @property
    def ram_budget(self) -> int:
        if self._ram_budget is None:
            self._ram_budget = default_ram_budget()
        return self._ram_budget

    # ---- bookkeeping ------------------------------------------------------------------------

    def on_evict(self, fn: Callable[[CacheEntry], None]) -> None:
        self._listeners.append(fn)

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.last_used = time.time()
            return entry

    def put(self, entry: CacheEntry) -> CacheEntry:
        """Add a freshly loaded entry (or return the one already there) and respect the budgets."""
        with self._lock:
            have = self._entries.get(entry.key)
            if have is not None:
                have.model_ids |= entry.model_ids
                have.last_used = time.time()
                return have
            self._entries[entry.key] = entry
            entry.pins += 1  # the caller is about to use it: never evict what was just loaded
            try:
                self._fit()
            finally:
                entry.pins -= 1
            return entry

    def entries(self) -> list[CacheEntry]:
        with self._lock:
            return list(self._entries.values())

    def used(self, where: str) -> int:
        """Bytes on "ram" (cpu) or "vram" (any cuda device)."""
        with self._lock:
            gpu = where == "vram"
            return sum(e.nbytes for e in self._entries.values() if e.device.startswith("cuda") == gpu)

    @contextmanager
    def pinned(self, keys: Iterable[str]) -> Iterator[None]:
        """Keep these entries where they are while a job uses them."""
        with self._lock:
            held = [self._entries[k] for k in keys if k in self._entries]
            for e in held:
                e.pins += 1
                e.last_used = time.time()
        try:
            yield
        finally:
            with self._lock:
                for e in held:
                    e.pins -= 1

    # ---- placement ----------------------------------------------------------------------------

    def place(self, keys: Iterable[str], device: str) -> float:
        """Move these entries to `device` (promotion from RAM is the fast path); seconds spent."""
        t0 = time.perf_counter()
        with self._lock:
            wanted = [self._entries[k] for k in keys if k in self._entries]
            if device.startswith("cuda"):
                need = sum(e.nbytes for e in wanted if e.device != device)
                self._make_vram_room(need, device, keep={e.key for e in wanted})
            for e in wanted:
                if e.device != device:
                    self._move(e, device)
                e.last_used = time.time()
            self._fit()
        return time.perf_counter() - t0

    def _move(self, entry: CacheEntry, device: str) -> None:
        to = getattr(entry.obj, "to", None)
        if to is not None and entry.nbytes:
            to(device)
        elif isinstance(entry.obj, dict):
            entry.obj = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in entry.obj.items()}
        entry.device = device

    def _make_vram_room(self, need: int, device: str, keep: set[str]) -> None:
        budget = self.vram_budget_for(device)
        if budget is None:
            return
        used = sum(e.nbytes for e in self._entries.values() if e.device == device)
        if used + need <= budget:
            return
        movable = sorted(
            (e for e in self._entries.values() if e.device == device and e.pins == 0 and e.key not in keep),
            key=lambda e: e.nbytes,
        )
        for e in movable:
            if used + need <= budget:
                break
            log.info("VRAM budget: offloading %s (%s, %.1f MB) to RAM", e.component, e.key[:12], e.nbytes / MB)
            self._move(e, "cpu")
            self.offloads += 1
            used -= e.nbytes
        if used + need > budget:
            log.warning("VRAM budget %.0f MB: %.0f MB pinned or needed; going over", budget / MB, (used + need) / MB)

    def vram_budget_for(self, device: str) -> int | None:
        if self.vram_budget is not None:
            return self.vram_budget
        try:
            import torch

            free, _total = torch.cuda.mem_get_info(device)
        except Exception:  # noqa: BLE001  (no CUDA: no VRAM budget to keep)
            return None
        used = sum(e.nbytes for e in self._entries.values() if e.device == device)
        self.vram_budget = max(0, free + used - VRAM_RESERVE)
        return self.vram_budget

    def _fit(self) -> None:
        """Drop least recently used unpinned RAM entries until the RAM cache is within budget."""
        used = self.used("ram")
        if used <= self.ram_budget:
            return
        for e in sorted(self._entries.values(), key=lambda e: e.last_used):
            if used <= self.ram_budget:
                break
            if e.pins or e.device.startswith("cuda"):
                continue
            used -= e.nbytes
            self._evict(e, "RAM budget")

    def _evict(self, entry: CacheEntry, why: str) -> None:
        log.info("%s: evicting %s %s (%.1f MB; used by %s)", why, entry.component, entry.key[:12], entry.nbytes / MB, ",".join(sorted(entry.model_ids)))
        self._entries.pop(entry.key, None)
        self.evictions += 1
        for fn in self._listeners:
            fn(entry)

    # ---- host-facing operations --------------------------------------------------------------

    def clear(self, model_id: str | None = None, component: str | None = None) -> dict[str, Any]:
        """Drop unpinned entries (all, or those of a model / component); pinned ones are reported."""
        freed, dropped, kept = 0, 0, []
        with self._lock:
            for e in list(self._entries.values()):
                if model_id is not None and model_id not in e.model_ids:
                    continue
                if component is not None and e.component != component:
                    continue
                if e.pins:
                    kept.append(e.key)
                    continue
                freed += e.nbytes
                dropped += 1
                self._evict(e, "clear_cache")
        collect()
        return {"dropped": dropped, "freed_mb": round(freed / MB, 2), "pinned_kept": kept}

    def resync(self, keys: Iterable[str]) -> None:
        """Learn where these entries' weights really are (after something else moved them)."""
        with self._lock:
            for key in keys:
                e = self._entries.get(key)
                params = getattr(e.obj, "parameters", None) if e is not None else None
                if e is None or params is None:
                    continue
                first = next(iter(params()), None)
                if first is not None:
                    dev = first.device
                    e.device = "cpu" if dev.type == "cpu" else f"{dev.type}:{dev.index or 0}"

    def clear_key(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.pins:
                return False
            self._evict(entry, "unload")
            return True

    def offload_idle(self) -> int:
        """Move every unpinned GPU entry to RAM; returns bytes moved."""
        moved = 0
        with self._lock:
            for e in self._entries.values():
                if e.device.startswith("cuda") and not e.pins:
                    self._move(e, "cpu")
                    moved += e.nbytes
                    self.offloads += 1
            self._fit()
        return moved

    def status(self) -> dict[str, Any]:
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: -e.last_used)
            vram_budget = self.vram_budget
            return {
                "entries": [e.describe() for e in entries],
                "ram": {"used_mb": round(self.used("ram") / MB, 2), "budget_mb": round(self.ram_budget / MB, 2)},
                "vram": {
                    "used_mb": round(self.used("vram") / MB, 2),
                    "budget_mb": round(vram_budget / MB, 2) if vram_budget is not None else None,
                },
                "evictions": self.evictions,
                "offloads": self.offloads,
            }


def collect() -> None:
    """Return freed memory: Python garbage, then the CUDA caching allocator's free blocks."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
