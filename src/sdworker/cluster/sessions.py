"""Session control in cluster mode: reach the replica that owns the session, else answer from the front.

A session whose replica still runs the incarnation that had it is asked there (its logs, metrics
and resources are the worker's own), and the answer gains `replica`. A session still waiting at
the front, a batch spread over replicas, or one whose replica was lost or restarted is answered
from the front's record; one of an earlier run from the front's ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..dispatch.registry import MethodSpec
from ..errors import ValidationFailed, WorkerError
from ..jobs.sessions import iso
from ..protocol.envelopes import Call, Form, encode_error, encode_success
from .jobs import ClusterJob, Sink
from .wire import child_line

if TYPE_CHECKING:
    from .front import Front
    from .spread import Spread

SHAPES = {
    "inference.get_session_status": "sessions:SessionStatusParams",
    "inference.cancel_session": "sessions:CancelParams",
    "inference.get_session_logs": "sessions:LogsParams",
    "inference.get_session_performance": "sessions:SessionParams",
    "inference.get_session_resources": "sessions:SessionParams",
}
SESSION_METHODS = frozenset(SHAPES)
LEGACY_COMMON = frozenset({"session_id", "model_id", "device_id", "request_id"})
_SPECS = {name: MethodSpec(name, lambda *a: None, ref, None, False, "") for name, ref in SHAPES.items()}


def validate(spec: MethodSpec, call: Call) -> Any:
    """Params as the worker's dispatcher reads them (legacy envelope fields a method lacks are ignored)."""
    raw = call.params
    if call.form is Form.LEGACY:
        fields = spec.params.model_fields
        raw = {k: v for k, v in raw.items() if k in fields or k not in LEGACY_COMMON}
    return spec.validate(raw)


def _unknown(session_id: str) -> ValidationFailed:
    return ValidationFailed(
        f"no session {session_id!r} in this cluster front's memory or its session ledger",
        [{"path": "session_id", "message": "unknown session"}],
    )


def route(front: "Front", call: Call, sink: Sink) -> None:
    spec = _SPECS[call.method]
    try:
        params = validate(spec, call)
    except WorkerError as exc:
        sink(encode_error(call, exc))
        return
    sid = params.session_id
    with front.lock:
        job = front.jobs.records.get(sid)
        owner = job.replica if isinstance(job, ClusterJob) else None
        if isinstance(job, ClusterJob) and owner is not None and owner.up and owner.token == job.token:
            front.ask(owner, call, lambda data, err: _owner_answer(call, sink, owner.public(), data, err))
            return
        try:
            sink(encode_success(call, _local(front, call.method, params, job)))
        except WorkerError as exc:
            sink(encode_error(call, exc))


def _owner_answer(call: Call, sink: Sink, replica: dict[str, Any], data: Any, err: WorkerError | None) -> None:
    if err is not None:
        sink(encode_error(call, err))
        return
    if isinstance(data, dict):
        data["replica"] = replica
    sink(encode_success(call, data))


def replica_of(job: "ClusterJob | Spread | None") -> dict[str, Any] | None:
    if isinstance(job, ClusterJob):
        return job.replica.public() if job.replica is not None else (job.history[-1] if job.history else None)
    if job is not None:
        return next((p.replica.public() for p in job.parts if p.replica is not None), None)
    return None


def summary(front: "Front", job: "ClusterJob | Spread") -> dict[str, Any]:
    """A session row: the worker's shape plus `replica` (null while it waits at the front)."""
    s = job.session
    queued = front.router.position(job) if isinstance(job, ClusterJob) else None
    if not isinstance(job, ClusterJob):
        waiting = [front.router.position(p) for p in job.parts]
        queued = min((w for w in waiting if w is not None), default=None)
    row = s.summary(queued if s.status == "queued" else None)
    row["replica"] = replica_of(job)
    if not isinstance(job, ClusterJob):
        row["replicas"] = [p.replica.public() if p.replica is not None else None for p in job.parts]
    return row


def _local(front: "Front", method: str, params: Any, job: "ClusterJob | Spread | None") -> dict[str, Any]:
    sid = params.session_id
    if job is None:
        rec = front.ledger.lookup(sid)
        if rec is None:
            raise _unknown(sid)
        return _recorded(method, params, rec)
    s = job.session
    if method == "inference.cancel_session":
        return _cancel(front, params, job)
    if method == "inference.get_session_logs":
        logs = [e for e in s.logs if params.level is None or e["level"] == params.level.lower()]
        return {"session_id": sid, "logs": logs[-params.limit:], "count": len(logs), "replica": replica_of(job)}
    if method == "inference.get_session_performance":
        return {"session_id": sid, "status": s.status, "performance": dict(s.performance), "replica": replica_of(job)}
    resources = {**s.resources, "device": s.device_id or None, "replica": replica_of(job)}
    if method == "inference.get_session_resources":
        return {"session_id": sid, "status": s.status, "resources": resources, "replica": replica_of(job)}
    out = summary(front, job)
    if not params.include_progress:
        out.pop("progress")
    if params.include_metrics:
        out["performance"] = dict(s.performance)
    if params.include_resources:
        out["resources"] = resources
    if params.include_logs:
        out["logs"] = list(s.logs)
    out["transitions"] = [{"status": t["status"], "time": iso(t["time"])} for t in s.transitions]
    return out


def _cancel(front: "Front", params: Any, job: "ClusterJob | Spread") -> dict[str, Any]:
    s = job.session
    if s.status not in ("queued", "loading", "running", "postprocessing"):
        return {"session_id": s.session_id, "cancelled": False, "status": s.status, "action": "not_active", "step": s.step}
    if front.jobs.cancel_waiting(job):
        return {"session_id": s.session_id, "cancelled": True, "status": s.status, "action": "dropped", "step": s.step}
    # parts of a spread batch already on replicas: each is cancelled where it runs
    parts = job.parts if not isinstance(job, ClusterJob) else [job]
    data = {"session_id": "", "force_cancel": params.force_cancel, "preserve_results": params.preserve_results}
    for p in parts:
        if p.replica is not None and not p.answered:
            call = Call("inference.cancel_session", {**data, "session_id": p.rid}, Form.NATIVE, "", "")
            front.ask(p.replica, call, lambda d, e: None)
    return {"session_id": s.session_id, "cancelled": True, "status": s.status, "action": "stopping", "step": s.step}


def _recorded(method: str, params: Any, rec: dict[str, Any]) -> dict[str, Any]:
    """An earlier run's session, from the ledger (the worker's ledger answers, in short)."""
    sid = rec["session_id"]
    if method == "inference.cancel_session":
        return {"session_id": sid, "cancelled": False, "status": rec["status"], "action": "not_active", "step": rec["progress"]["step"]}
    if method == "inference.get_session_logs":
        logs = [e for e in rec["logs"] if params.level is None or e.get("level") == params.level.lower()]
        return {"session_id": sid, "status": rec["status"], "logs": logs[-params.limit:], "count": len(logs), "source": "ledger"}
    if method == "inference.get_session_performance":
        return {"session_id": sid, "status": rec["status"], "performance": rec["performance"], "source": "ledger"}
    if method == "inference.get_session_resources":
        return {"session_id": sid, "status": rec["status"], "resources": {"device": rec.get("device_id")}, "source": "ledger"}
    performance, logs = rec.pop("performance"), rec.pop("logs")
    rec.pop("request", None)
    if not params.include_progress:
        rec.pop("progress", None)
    if params.include_metrics:
        rec["performance"] = performance
    if params.include_logs:
        rec["logs"] = logs
    return rec
