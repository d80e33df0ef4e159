"""MemoryManager rules on stand-in objects: budgets, LRU, pins, smallest-first VRAM offload, sharing.

The placement code only calls `.to(device)` on what it holds, so objects that record their moves
exercise every rule without a GPU; the real-model behaviour is in test_model_domain.py.
"""

from __future__ import annotations

import time

from sdworker.managers.memory import MB, CacheEntry, MemoryManager


class Movable:
    def __init__(self) -> None:
        self.moves: list[str] = []

    def to(self, device: str) -> Movable:
        self.moves.append(device)
        return self


def entry(key: str, mb: float, device: str = "cpu", model: str = "m") -> CacheEntry:
    return CacheEntry(key, "unet", Movable(), int(mb * MB), device, "fp16", f"/models/{key}", {model})


def test_ram_budget_evicts_least_recently_used_first():
    mem = MemoryManager(ram_budget=int(25 * MB), vram_budget=0)
    dropped: list[str] = []
    mem.on_evict(lambda e: dropped.append(e.key))
    mem.put(entry("a", 10))
    time.sleep(0.01)
    mem.put(entry("b", 10))
    time.sleep(0.01)
    mem.get("a")  # a is now more recent than b
    mem.put(entry("c", 10))
    assert dropped == ["b"]
    assert {e.key for e in mem.entries()} == {"a", "c"}
    assert mem.used("ram") <= mem.ram_budget


def test_pinned_entries_are_never_evicted_or_moved():
    mem = MemoryManager(ram_budget=int(15 * MB), vram_budget=int(10 * MB))
    mem.put(entry("a", 10))
    with mem.pinned(["a"]):
        mem.put(entry("b", 10))  # over budget, but a is pinned and b was just loaded
        assert {e.key for e in mem.entries()} == {"a", "b"}
        assert mem.clear()["pinned_kept"] == ["a"]
        assert [e.key for e in mem.entries()] == ["a"]
    assert mem.clear()["dropped"] == 1 and mem.entries() == []


def test_vram_room_is_made_by_offloading_the_smallest_idle_entries_first():
    mem = MemoryManager(ram_budget=int(1000 * MB), vram_budget=int(100 * MB))
    for key, mb in (("big", 60), ("small", 10), ("mid", 25)):
        mem.put(entry(key, mb))
        mem.place([key], "cuda:0")
    assert mem.used("vram") == 95 * MB
    mem.put(entry("new", 20))
    mem.place(["new"], "cuda:0")  # needs 15 MB more: small (10) then mid (25) go, big stays
    where = {e.key: e.device for e in mem.entries()}
    assert where == {"big": "cuda:0", "small": "cpu", "mid": "cpu", "new": "cuda:0"}
    assert mem.offloads == 2
    small = next(e for e in mem.entries() if e.key == "small")
    assert small.obj.moves == ["cuda:0", "cpu"]  # offloaded to RAM, not dropped


def test_vram_offload_skips_pinned_and_the_entries_being_placed():
    mem = MemoryManager(ram_budget=int(1000 * MB), vram_budget=int(50 * MB))
    for key in ("a", "b"):
        mem.put(entry(key, 20))
        mem.place([key], "cuda:0")
    mem.put(entry("c", 20))
    with mem.pinned(["a", "b"]):
        mem.place(["c"], "cuda:0")  # nothing may move: the budget is exceeded (with a warning)
    assert all(e.device == "cuda:0" for e in mem.entries())


def test_shared_entries_are_one_object_for_every_model():
    mem = MemoryManager(ram_budget=int(100 * MB), vram_budget=0)
    first = mem.put(entry("te", 5, model="sdxl-a"))
    second = mem.put(entry("te", 5, model="sdxl-b"))
    assert second is first and first.model_ids == {"sdxl-a", "sdxl-b"}
    assert mem.used("ram") == 5 * MB


def test_offload_idle_and_status():
    mem = MemoryManager(ram_budget=int(100 * MB), vram_budget=int(100 * MB))
    mem.put(entry("a", 10))
    mem.put(entry("b", 10))
    mem.place(["a", "b"], "cuda:0")
    with mem.pinned(["b"]):
        assert mem.offload_idle() == 10 * MB
    st = mem.status()
    assert st["vram"]["used_mb"] == 10.0 and st["ram"]["used_mb"] == 10.0
    assert {e["key"]: e["device"] for e in st["entries"]} == {"a": "cpu", "b": "cuda:0"}
