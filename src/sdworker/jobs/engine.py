"""The job engine: admission (busy, shutting down), timeouts, cancel, and one executor per device."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .context import JobContext
from ..errors import Busy, Cancelled, ShuttingDown, TimedOut, WorkerError, placed
from ..protocol.events import EventEmitter
from .executor import DeviceExecutor
from .queue import JobQueue
from .sessions import FINAL, Session, SessionRegistry

if TYPE_CHECKING:
    from ..store.ledger import SessionLedger

log = logging.getLogger(__name__)

Responder = Callable[[Any, "WorkerError | None"], None]


@dataclass(eq=False)
class Job:
    session: Session
    run: Callable[[JobContext], Any]
    respond: Responder
    events: EventEmitter
    timeout: float | None = None
    preview: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    timer: threading.Timer | None = None
    answered: bool = False


class JobEngine:
    def __init__(
        self,
        sessions: SessionRegistry,
        max_queue: int,
        before_job: Callable[[], None] = lambda: None,
        on_finish: Callable[[Session], None] = lambda s: None,
    ):
        self.sessions = sessions
        self.max_queue = max_queue
        self._before_job = before_job
        self._on_finish = on_finish
        self._lock = threading.Lock()
        self._executors: dict[str, DeviceExecutor] = {}
        self._jobs: dict[str, Job] = {}  # unfinished jobs by session id
        self.accepting = True
        self.ledger: "SessionLedger | None" = None  # set by the App: every transition is recorded there

    # ---- admission ---------------------------------------------------------------------------

    def executor(self, device_id: str) -> DeviceExecutor:
        with self._lock:
            ex = self._executors.get(device_id)
            if ex is None:
                ex = DeviceExecutor(device_id, JobQueue(), self)
                self._executors[device_id] = ex
                ex.start()
            return ex

    def submit(self, job: Job) -> None:
        s = job.session
        if not self.accepting:
            raise ShuttingDown("the worker is shutting down and takes no new jobs")
        ex = self.executor(s.executor)
        with self._lock:
            if s.session_id in self._jobs:
                raise Busy(f"session {s.session_id!r} is already queued or running; use another session_id")
            if len(ex.queue) >= self.max_queue:
                raise Busy(f"the queue is full ({self.max_queue} jobs waiting); retry later or raise --max-queue")
            self._jobs[s.session_id] = job
        self.sessions.add(s)
        s.log(f"queued {s.method} (priority {s.priority})")
        self.status(s, "queued", job)
        if job.timeout:
            job.timer = threading.Timer(job.timeout, self._expire, args=(job,))
            job.timer.daemon = True
            job.timer.start()
        ex.queue.put(job, s.priority)

    def queue_position(self, session: Session) -> int | None:
        if session.status != "queued":
            return None
        with self._lock:
            ex = self._executors.get(session.executor)
        if ex is None:
            return None
        for i, job in enumerate(ex.queue.ordered()):
            if job.session is session:
                return i + 1
        return None

    def queued_count(self) -> int:
        with self._lock:
            return sum(len(ex.queue) for ex in self._executors.values())

    def running(self) -> list[Session]:
        with self._lock:
            return [ex.current.session for ex in self._executors.values() if ex.current is not None]

    # ---- transitions ---------------------------------------------------------------------------

    def status(self, session: Session, status: str, job: Job | None = None) -> None:
        job = job or self._jobs.get(session.session_id)
        session.status = status
        entry = {"status": status, "time": time.time()}
        session.transitions.append(entry)
        if self.ledger is not None:  # a final status is committed there before the event and the answer
            try:
                self.ledger.record(session, status)
            except Exception:  # the ledger must never cost the job
                log.exception("ledger record failed for %s", session.session_id)
        if job is not None:
            data = {"status": status, "session_id": session.session_id, "progress": session.progress()}
            if session.error_code:
                data["error_code"] = session.error_code
            job.events.emit("session_status", data)

    def finish(self, job: Job, result: Any = None, error: WorkerError | None = None) -> None:
        """Record the end of a job and answer it, exactly once."""
        with self._lock:
            if job.answered:
                return
            job.answered = True
            self._jobs.pop(job.session.session_id, None)
        if job.timer is not None:
            job.timer.cancel()
        s = job.session
        s.finished_at = time.time()
        if error is None:
            final = "completed"
        else:
            s.error, s.error_code = placed(error, "data")[0], error.code  # a session row names fields as native answers do
            final = {"cancelled": "cancelled", "timeout": "timed_out"}.get(error.code, "failed")
            s.log(f"{final}: {s.error}", "error" if final == "failed" else "warning")
        self.status(s, final, job)
        try:
            self._on_finish(s)
        except Exception:  # the ledger must never cost the host its answer
            log.exception("on_finish hook failed for %s", s.session_id)
        job.respond(result, error)

    # ---- control ---------------------------------------------------------------------------

    def cancel(self, session_id: str, force: bool = False, preserve: bool = False, reason: str = "cancelled") -> str:
        """Cancel a job: drop it if queued, else flag it for its next step. Returns what happened."""
        with self._lock:
            job = self._jobs.get(session_id)
        if job is None:
            return "not_active"
        s = job.session
        s.force_cancel = s.force_cancel or force
        s.preserve_results = s.preserve_results or preserve
        s.cancel_reason = s.cancel_reason or reason
        s.cancel_event.set()
        ex = self._executors.get(s.executor)
        if s.status == "queued" and ex is not None and ex.queue.remove(job):
            err: WorkerError = (
                TimedOut("the job timed out while waiting in the queue")
                if reason == "timeout"
                else Cancelled("the job was cancelled before it started")
            )
            self.finish(job, error=err)
            return "dropped"
        s.log(f"{reason} requested{' (force)' if force else ''}; stopping at the next step")
        return "stopping"

    def _expire(self, job: Job) -> None:
        if job.session.status not in FINAL:
            self.cancel(job.session.session_id, reason="timeout")

    def close(self, drain: bool, cancel_running: bool) -> None:
        """Stop taking jobs. drain: run what is queued; else answer it shutting_down."""
        self.accepting = False
        with self._lock:
            executors = list(self._executors.values())
        for ex in executors:
            if not drain or cancel_running:
                for job in ex.queue.drain():
                    self.finish(job, error=ShuttingDown("the worker is shutting down; this job never started"))
            current = ex.current
            if cancel_running and current is not None:
                self.cancel(current.session.session_id)
            ex.queue.close()

    def join(self, timeout: float | None = None) -> None:
        with self._lock:
            executors = list(self._executors.values())
        for ex in executors:
            ex.join(timeout)

    def before_job(self) -> None:
        self._before_job()
