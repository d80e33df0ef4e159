"""inference.batch_process over several replicas: split the items, run the parts, merge one answer.

Items that would share a batched pipeline call (same model, size, steps and mode) stay together
where they can; the groups are dealt to as many parts as there are replicas up (largest first,
to the part with the fewest items), splitting the largest groups when there are fewer groups than
replicas. The host sees one session: its progress is the sum of the parts', and the result lists
every item in request order, each with the replica that ran it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..errors import WorkerError
from ..jobs.sessions import Session
from ..protocol.envelopes import Call, Form, encode_event
from ..protocol.events import all_jsonrpc
from .jobs import ClusterJob, Sink
from .wire import model_of

if TYPE_CHECKING:
    from .jobs import JobBook

_COUNTS = ("groups", "pipeline_calls", "images", "steps")
_ITEM_KEYS = ("batch_config", "preview")


def _group_key(item: Any) -> tuple[Any, ...]:
    if not isinstance(item, dict):
        return ("invalid",)
    bag = {**(item.get("parameters") or {}), **item} if isinstance(item.get("parameters"), dict) else item
    steps = bag.get("steps", bag.get("num_inference_steps"))
    return (model_of(bag), bag.get("width"), bag.get("height"), steps, bag.get("type") or bag.get("mode"))


def split(items: list[Any], parts: int) -> list[list[int]]:
    """Item indexes per part (each part in request order)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(_group_key(item), []).append(i)
    pieces = list(groups.values())
    while len(pieces) < parts:
        big = max(pieces, key=len)
        if len(big) < 2:
            break
        pieces.remove(big)
        cut = len(big) // 2
        pieces += [big[:cut], big[cut:]]
    bins: list[list[int]] = [[] for _ in range(min(parts, len(pieces)))]
    for piece in sorted(pieces, key=len, reverse=True):
        min(bins, key=len).extend(piece)
    return [sorted(b) for b in bins if b]


def plan_spread(book: JobBook, call: Call, params: dict[str, Any], sink: Sink, session: Session, retry: bool) -> Spread | None:
    """A Spread when the batch has items for more than one replica, else None (one job)."""
    items = params.get("requests")
    up = [r for r in book.front.router.replicas if r.up]
    if call.method != "inference.batch_process" or not isinstance(items, list) or len(items) < 2 or len(up) < 2:
        return None
    indexes = split(items, len(up))
    if len(indexes) < 2:
        return None
    return Spread(book, call, params, sink, session, indexes, retry)


class Spread:
    """One host batch made of parts; looks like a job to the JobBook (call, sink, session, timer)."""

    def __init__(self, book: JobBook, call: Call, params: dict[str, Any], sink: Sink, session: Session, indexes: list[list[int]], retry: bool):
        self.book, self.call, self.sink, self.session, self.indexes = book, call, sink, session, indexes
        self.timer: threading.Timer | None = None
        self.results: dict[int, tuple[Any, WorkerError | None]] = {}
        self._steps: dict[int, tuple[int, int, Any]] = {}
        self.parts: list[ClusterJob] = []
        items = params["requests"]
        for k, idx in enumerate(indexes):
            sid = f"{session.session_id}~{k}"
            sub = {key: params[key] for key in _ITEM_KEYS if key in params}
            sub.update(requests=[items[i] for i in idx], session_id=sid)
            sub_call = Call(call.method, sub, Form.NATIVE, sid, sid, priority=call.priority, session_id=sid)
            model = model_of(items[idx[0]]) if isinstance(items[idx[0]], dict) else None
            sub_session = Session(sid, call.request_id, call.method, model, "", call.priority)
            self.parts.append(ClusterJob(sub_call, sub, sink, sub_session, model, retry, call.timeout, parent=self, part=k))

    def progress(self, part: ClusterJob, data: dict[str, Any]) -> None:
        self._steps[part.part] = (int(data.get("step") or 0), int(data.get("total_steps") or 0), data.get("eta_seconds"))
        step = sum(s for s, _, _ in self._steps.values())
        total = sum(t for _, t, _ in self._steps.values())
        etas = [e for _, _, e in self._steps.values() if isinstance(e, (int, float))]
        s = self.session
        s.step, s.total_steps, s.eta_seconds = step, total, (max(etas) if etas else None)
        out = {**data, **s.progress()}
        idx = self.indexes[part.part]
        if isinstance(data.get("item_index"), int) and 0 <= data["item_index"] < len(idx):
            out["item_index"] = idx[data["item_index"]]
        if isinstance(data.get("item_indices"), list):
            out["item_indices"] = [idx[i] for i in data["item_indices"] if isinstance(i, int) and 0 <= i < len(idx)]
        out["part"] = part.part
        self.book.front.write(encode_event(self.call, "progress", out, notification=all_jsonrpc()))

    def part_done(self, part: ClusterJob, data: Any, err: WorkerError | None) -> None:
        self.results[part.part] = (data, err)
        if len(self.results) < len(self.parts):
            return
        errors = [e for _, e in self.results.values() if e is not None]
        if len(errors) == len(self.parts):
            self.book.close(self, None, errors[0])
            return
        self.book.close(self, self.merge(), None)

    def merge(self) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        perf: dict[str, Any] = {}
        warnings: list[str] = []
        replicas: list[dict[str, Any]] = []
        for k, part in enumerate(self.parts):
            data, err = self.results[k]
            idx = self.indexes[k]
            replica = part.replica.public() if part.replica is not None else None
            replicas.append({"replica": replica, "items": idx, "error_code": err.code if err else None})
            if err is not None or not isinstance(data, dict):
                entry = {"error_code": err.code, "error": err.message, "error_details": err.details} if err else {"error_code": "internal_error", "error": "no result"}
                items += [{"index": i, "success": False, "error": entry, "replica": replica} for i in idx]
                continue
            for it in data.get("items") or []:
                local = it.get("index")
                items.append({**it, "index": idx[local] if isinstance(local, int) and 0 <= local < len(idx) else local, "replica": replica})
            warnings += [w for w in data.get("warnings") or [] if w not in warnings]
            for key, value in (data.get("performance") or {}).items():
                if key in _COUNTS and isinstance(value, (int, float)):
                    perf[key] = perf.get(key, 0) + value
                elif isinstance(value, list):
                    perf[key] = perf.get(key, []) + value
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    perf[key] = max(perf.get(key, value), value)  # the parts ran side by side
                else:
                    perf.setdefault(key, value)
        items.sort(key=lambda it: it["index"] if isinstance(it.get("index"), int) else -1)
        first = next((r["replica"] for r in replicas if r["replica"] is not None), None)
        return {"items": items, "session_id": self.session.session_id, "performance": perf, "warnings": warnings, "replica": first, "replicas": replicas}
