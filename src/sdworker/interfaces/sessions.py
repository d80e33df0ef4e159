"""Sessions: this run's (in memory) and earlier runs' (the ledger): status, logs, timings, cancel.

Everything here reads memory or one indexed ledger row, so the stdin reader answers it itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ValidationFailed
from ..jobs.sessions import Session, iso

if TYPE_CHECKING:
    from ..jobs.engine import JobEngine
    from ..jobs.sessions import SessionRegistry
    from ..store.ledger import SessionLedger


def _unknown(session_id: str) -> ValidationFailed:
    return ValidationFailed(
        f"no session {session_id!r} in this worker's memory or its session ledger",
        [{"path": "session_id", "message": "unknown session"}],
    )


class SessionInterface:
    def __init__(self, sessions: "SessionRegistry", engine: "JobEngine", ledger: "SessionLedger | None"):
        self.sessions = sessions
        self.engine = engine
        self.ledger = ledger

    def session(self, session_id: str) -> Session:
        s = self.sessions.get(session_id)
        if s is None:
            raise _unknown(session_id)
        return s

    def job_key(self, key: str) -> str:
        """A session id, or the request id of an active job (JSON-RPC's $/cancelRequest names requests)."""
        if self.sessions.get(key) is None:
            for s in self.sessions.active():
                if s.request_id == key:
                    return s.session_id
        return key

    def recorded(self, session_id: str) -> dict[str, Any] | None:
        """A session this run does not hold (an earlier run's, or one trimmed from memory), from the ledger."""
        if self.sessions.get(session_id) is not None:
            return None
        rec = self.ledger.lookup(session_id) if self.ledger is not None else None
        if rec is None:
            raise _unknown(session_id)
        return rec

    def summary(self, s: Session) -> dict[str, Any]:
        return s.summary(self.engine.queue_position(s))

    def status(self, session_id: str, progress: bool, metrics: bool, resources: bool, logs: bool) -> dict[str, Any]:
        rec = self.recorded(session_id)
        if rec is not None:  # from the ledger: same shape, plus source/run_id/pid
            performance, lines = rec.pop("performance"), rec.pop("logs")
            rec.pop("request")
            if not progress:
                rec.pop("progress")
            if metrics:
                rec["performance"] = performance
            if resources:
                rec["resources"] = {"device": rec["device_id"]}
            if logs:
                rec["logs"] = lines
            return rec
        s = self.session(session_id)
        out = self.summary(s)
        if not progress:
            out.pop("progress")
        if metrics:
            out["performance"] = dict(s.performance)
        if resources:
            out["resources"] = self.resources(s)
        if logs:
            out["logs"] = list(s.logs)
        out["transitions"] = [{"status": t["status"], "time": iso(t["time"])} for t in s.transitions]
        return out

    def cancel(self, key: str, force: bool, preserve: bool) -> dict[str, Any]:
        key = self.job_key(key)
        rec = self.recorded(key)
        if rec is not None:  # an earlier run's session: nothing left to stop
            return {"session_id": rec["session_id"], "cancelled": False, "status": rec["status"], "action": "not_active", "step": rec["progress"]["step"]}
        s = self.session(key)
        action = self.engine.cancel(s.session_id, force=force, preserve=preserve)
        return {"session_id": s.session_id, "cancelled": action != "not_active", "status": s.status, "action": action, "step": s.step}

    def logs(self, session_id: str, level: str | None, limit: int) -> dict[str, Any]:
        rec = self.recorded(session_id)
        if rec is not None:
            lines = [e for e in rec["logs"] if level is None or e.get("level") == level.lower()]
            return {
                "session_id": rec["session_id"],
                "status": rec["status"],
                "logs": lines[-limit:],
                "count": len(lines),
                "transitions": rec["transitions"],
                "source": "ledger",
            }
        s = self.session(session_id)
        lines = [e for e in s.logs if level is None or e["level"] == level.lower()]
        return {"session_id": s.session_id, "logs": lines[-limit:], "count": len(lines)}

    def performance(self, session_id: str) -> dict[str, Any]:
        rec = self.recorded(session_id)
        if rec is not None:
            return {"session_id": rec["session_id"], "status": rec["status"], "performance": rec["performance"], "source": "ledger"}
        s = self.session(session_id)
        return {"session_id": s.session_id, "status": s.status, "performance": dict(s.performance)}

    def resources_of(self, session_id: str) -> dict[str, Any]:
        s = self.session(session_id)
        return {"session_id": s.session_id, "status": s.status, "resources": self.resources(s)}

    @staticmethod
    def resources(s: Session) -> dict[str, Any]:
        import psutil

        now = psutil.Process().memory_info().rss
        return {**s.resources, "device": s.device_id, "rss_mb": round(now / 2**20, 1)}

    def active(self, device_id: str | None, include_interrupted: bool) -> dict[str, Any]:
        active = [s for s in self.sessions.active() if device_id in (None, s.device_id)]
        out: dict[str, Any] = {"sessions": [self.summary(s) for s in active], "count": len(active)}
        if include_interrupted:
            out["interrupted"] = self.ledger.interrupted() if self.ledger is not None else []
        return out
