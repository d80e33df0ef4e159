"""Methods every replica answers, merged into one answer with the replica (node, device) on each row.

Views (capabilities, VRAM, cache, pipelines) list every replica's rows; changes (load, unload,
clear, optimize, sidecar metadata) are made on every replica, since any replica may run the next
job, and answer with the first replica's result plus each replica's outcome under `replicas`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..errors import WorkerError
from .router import ReplicaState

VIEWS = frozenset({"inference.get_capabilities", "model.get_vram_model_status", "model.get_cache_status", "inference.get_pipeline_info"})
CHANGES = frozenset({
    "model.load_model", "model.unload_model", "model.load_vae", "model.load_lora", "model.load_encoder", "model.load_unet",
    "model.clear_cache", "model.optimize_memory", "model.optimize_model", "model.update_metadata",
})
BROADCAST = VIEWS | CHANGES

Part = tuple[ReplicaState, Any, "WorkerError | None"]


class Gather:
    """Collects one answer per replica asked, then calls `done` once with all of them."""

    def __init__(self, replicas: list[ReplicaState], done: Callable[[list[Part]], None]):
        self._want = {r.id for r in replicas}
        self._parts: dict[int, Part] = {}
        self._done = done
        self._lock = threading.Lock()

    def add(self, replica: ReplicaState, data: Any, err: WorkerError | None) -> None:
        with self._lock:
            if replica.id not in self._want or replica.id in self._parts:
                return
            self._parts[replica.id] = (replica, data, err)
            if len(self._parts) < len(self._want):
                return
            parts = [self._parts[i] for i in sorted(self._parts)]
        self._done(parts)


def _rows(rows: Any, replica: ReplicaState) -> list[Any]:
    if not isinstance(rows, list):
        return []
    pub = replica.public()
    return [{**row, "node": pub["node"], "replica": pub} if isinstance(row, dict) else row for row in rows]


def _sum(values: list[Any]) -> Any:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return round(sum(nums), 2) if nums else None


def merge(method: str, parts: list[Part]) -> tuple[Any, WorkerError | None]:
    ok = [(r, d) for r, d, e in parts if e is None and isinstance(d, dict)]
    if not ok:
        errors = [e for _, _, e in parts if e is not None]
        return None, errors[0] if errors else WorkerError("no replica answered", code="worker_lost")
    first = dict(ok[0][1])
    if method == "inference.get_capabilities":
        first["devices"] = [row for r, d in ok for row in _rows(d.get("devices"), r)]
        first["max_concurrent"] = len(ok)
        first["replicas"] = [r.public() for r, _ in ok]
    elif method == "model.get_vram_model_status":
        first["cuda_available"] = any(bool(d.get("cuda_available")) for _, d in ok)
        first["devices"] = [row for r, d in ok for row in _rows(d.get("devices"), r)]
    elif method == "model.get_cache_status":
        first["entries"] = [row for r, d in ok for row in _rows(d.get("entries"), r)]
        first["pipelines"] = [row for r, d in ok for row in _rows(d.get("pipelines"), r)]
        for pool in ("ram", "vram"):
            bags = [b for _, d in ok if isinstance(b := d.get(pool), dict)]
            if bags:
                first[pool] = {k: _sum([b.get(k) for b in bags]) for k in bags[0]}
        for key in ("evictions", "offloads", "rss_mb"):
            first[key] = _sum([d.get(key) for _, d in ok])
        first["replicas"] = [{"replica": r.public(), "ram": d.get("ram"), "vram": d.get("vram"), "rss_mb": d.get("rss_mb")} for r, d in ok]
    elif method == "inference.get_pipeline_info":
        first["pipelines"] = [row for r, d in ok for row in _rows(d.get("pipelines"), r)]
        first["count"] = len(first["pipelines"])
    else:
        first["replicas"] = [
            {"replica": r.public(), "success": e is None, **({"result": d} if e is None else {"error_code": e.code, "error": e.message})}
            for r, d, e in parts
        ]
    return first, None


def track_models(method: str, params: dict[str, Any], replica: ReplicaState) -> None:
    """Keep the router's idea of what a replica holds in step with a change it made."""
    model = params.get("model_id")
    if method == "model.load_model" and isinstance(model, str):
        replica.models.add(model)
    elif method in ("model.unload_model", "model.clear_cache"):
        if isinstance(model, str):
            replica.models.discard(model)
        else:
            replica.models.clear()
