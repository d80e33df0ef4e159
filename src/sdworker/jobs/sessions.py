"""Session records: one per job, readable by the control plane while the job runs."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

ACTIVE = ("queued", "loading", "running", "postprocessing")
FINAL = ("completed", "failed", "cancelled", "timed_out")


_second: tuple[int, str] = (-1, "")  # the last whole second formatted (system.ping asks many times a second)


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a Z, as the host's DateTime parser reads it."""
    global _second
    if ts is None:
        return None
    ms = int(ts * 1000)
    sec = ms // 1000
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{ms % 1000:03d}Z"


@dataclass
class Session:
    session_id: str
    request_id: str
    method: str
    model_id: str | None
    device_id: str
    priority: int = 0
    executor: str = "default"  # the device queue this job waits in ("default": the worker's device)
    status: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total_steps: int = 0
    eta_seconds: float | None = None
    error: str | None = None
    error_code: str | None = None
    performance: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    request: dict[str, Any] | None = field(default=None, repr=False)  # the request data, for the ledger
    ledger_key: str | None = field(default=None, repr=False)  # this session's row in the ledger
    # control: set by cancel/timeout, read by the running job at its next step
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    cancel_reason: str | None = None  # "cancelled" | "timeout"
    force_cancel: bool = False
    preserve_results: bool = False

    MAX_LOGS = 500

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def log(self, message: str, level: str = "info") -> None:
        if len(self.logs) >= self.MAX_LOGS:
            del self.logs[: len(self.logs) - self.MAX_LOGS + 1]
        self.logs.append({"time": iso(time.time()), "level": level, "message": message})

    def progress(self) -> dict[str, Any]:
        percent = round(100.0 * self.step / self.total_steps, 1) if self.total_steps else 0.0
        if self.status == "completed":
            percent = 100.0
        return {"step": self.step, "total_steps": self.total_steps, "percent": percent, "eta_seconds": self.eta_seconds}

    def summary(self, queue_position: int | None = None) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "request_id": self.request_id,
            "method": self.method,
            "model_id": self.model_id,
            "device_id": self.device_id,
            "status": self.status,
            "priority": self.priority,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "progress": self.progress(),
            "queue_position": queue_position,
            "error": self.error,
            "error_code": self.error_code,
            "outputs": list(self.outputs),
        }


class SessionRegistry:
    """All sessions of this run; finished ones are kept up to `keep_finished`, oldest dropped first."""

    def __init__(self, keep_finished: int = 1000):
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.keep_finished = keep_finished

    def add(self, session: Session) -> None:
        with self._lock:
            self._sessions[session.session_id] = session
            self._trim()

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(session_id)

    def active(self) -> list[Session]:
        with self._lock:
            return [s for s in self._sessions.values() if s.active]

    def all(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def _trim(self) -> None:
        finished = [sid for sid, s in self._sessions.items() if not s.active]
        for sid in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._sessions[sid]
