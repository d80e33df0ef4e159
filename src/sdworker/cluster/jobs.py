"""Jobs at the front: admission, the session record and ledger, dispatch, events, answers, losses.

A job is answered exactly once: by its replica's response, or by the front when it is dropped
from the front's queue (cancel, timeout, shutdown) or lost with its replica (worker_lost, or one
more run elsewhere when the request said `retry: true`). Whatever comes later for it from a lost
incarnation finds no job and is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import Busy, Cancelled, ShuttingDown, TimedOut, WorkerError, WorkerLost
from ..jobs.sessions import ACTIVE, FINAL, Session
from ..protocol.envelopes import Call, encode_error, encode_event, encode_success
from ..protocol.events import all_jsonrpc
from .router import ReplicaState
from .wire import answer_of, child_line, model_of, strip_front_keys

if TYPE_CHECKING:
    from .front import Front
    from .spread import Spread

log = logging.getLogger(__name__)

Sink = Callable[["dict[str, Any] | None"], None]
FINAL_OF = {"cancelled": "cancelled", "timeout": "timed_out"}
ORDER = {s: i for i, s in enumerate(ACTIVE)}
MAX_TRIES = 2  # `retry: true` runs a lost job once more
KEEP_FINISHED = 1000  # finished jobs kept in memory for session queries (older ones: the ledger)


@dataclass(eq=False)
class ClusterJob:
    call: Call
    params: dict[str, Any]  # what the child gets (the front's own keys taken out)
    sink: Sink
    session: Session
    model_id: str | None
    retry: bool = False
    timeout: float | None = None
    arrived: float = field(default_factory=time.monotonic)
    tries: int = 0
    replica: ReplicaState | None = None
    token: str | None = None
    answered: bool = False
    parent: Spread | None = None  # a part of a batch spread over replicas
    part: int = 0
    timer: threading.Timer | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # replicas it ran on

    @property
    def rid(self) -> str:
        """The id the child knows it by: its session id (so the host's session id works there too)."""
        return self.session.session_id


class JobBook:
    def __init__(self, front: Front):
        self.front = front
        self.active: dict[str, ClusterJob | Spread] = {}  # unanswered, by host session id
        self.records: dict[str, ClusterJob | Spread] = {}  # every job of this run, by host session id
        self.sent: dict[tuple[int, str], ClusterJob] = {}  # dispatched, by (replica, child id)
        self.accepting = True

    # ---- admission ---------------------------------------------------------------------------

    def submit(self, call: Call, sink: Sink, retry_flag: bool = False) -> None:
        from .spread import plan_spread

        params, retry = strip_front_keys(call.params)
        if "device_id" in params:  # the replica's device runs the job (each replica has one)
            params = {k: v for k, v in params.items() if k != "device_id"}
        sid = params.get("session_id")
        sid = str(sid) if isinstance(sid, (str, int)) and not isinstance(sid, bool) and sid != "" else (call.session_id or call.request_id)
        call.session_id = sid
        f = self.front
        with f.lock:
            try:
                if not self.accepting:
                    raise ShuttingDown("the worker is shutting down and takes no new jobs")
                if sid in self.active:
                    raise Busy(f"session {sid!r} is already queued or running; use another session_id")
                if len(f.router.waiting) >= f.settings.max_queue:
                    raise Busy(f"the queue is full ({f.settings.max_queue} jobs waiting); retry later or raise --max-queue")
                if f.all_dead():
                    raise WorkerLost("every replica is gone (Ray used up its restarts); restart the cluster front")
            except WorkerError as exc:
                sink(encode_error(call, exc))
                return
            session = Session(sid, call.request_id, call.method, model_of(params, f.settings.default_model), "", call.priority, request=params)
            spread = plan_spread(self, call, params, sink, session, retry or retry_flag)
            job: ClusterJob | Spread
            if spread is not None:
                job, parts = spread, spread.parts
            else:
                job = ClusterJob(call, params, sink, session, session.model_id, retry or retry_flag, call.timeout)
                parts = [job]
            self.active[sid] = self.records[sid] = job
            session.log(f"queued {call.method} (priority {call.priority})")
            self.transition(job, "queued")
            for part in parts:
                self.enqueue(part)
            if call.timeout:
                timer = threading.Timer(call.timeout, self._expire, args=(job,))
                timer.daemon = True
                job.timer = timer
                timer.start()
            self.pump()

    def enqueue(self, job: ClusterJob, avoid: int | None = None, first: bool = False) -> None:
        self.front.router.add(job, job.model_id, job.call.priority, avoid=avoid, first=first)

    def pump(self) -> None:
        """Give free replicas their next jobs (called under the front's lock)."""
        f = self.front
        for q, replica in f.router.assign():
            job: ClusterJob = q.job
            left = None
            if job.timeout is not None:
                left = job.timeout - (time.monotonic() - job.arrived)
                if left <= 0:
                    self.finish(job, None, TimedOut("the job timed out while waiting in the queue"))
                    continue
            job.replica, job.token, job.tries = replica, replica.token, job.tries + 1
            replica.running.append(job)
            if job.model_id:
                replica.models.add(job.model_id)
            self.sent[(replica.id, job.rid)] = job
            job.session.device_id = str(replica.info.get("device") or "")
            job.history.append(replica.public())
            job.session.log(f"sent to replica {replica.id} on node {str(replica.info.get('node'))[:12]} ({job.session.device_id})")
            f.pool.send(replica, child_line(job.call, job.rid, job.params, timeout=left))

    # ---- from the child ------------------------------------------------------------------------

    def event(self, replica: ReplicaState, doc: dict[str, Any]) -> None:
        job = self.sent.get((replica.id, str(doc.get("request_id"))))
        if job is None or job.token != replica.token:
            return
        name, data = doc.get("event"), doc.get("data")
        if not isinstance(data, dict):
            return
        s = job.session
        if name == "progress":
            s.step, s.total_steps = int(data.get("step") or 0), int(data.get("total_steps") or 0)
            s.eta_seconds = data.get("eta_seconds")
            if job.parent is not None:
                job.parent.progress(job, data)
            else:
                self.front.write(encode_event(job.call, "progress", data, notification=all_jsonrpc()))
        elif name == "session_status":
            status = data.get("status")
            if status in ACTIVE and status != "queued":
                self.transition(job.parent or job, str(status))
        elif job.parent is None and isinstance(name, str):
            self.front.write(encode_event(job.call, name, data, notification=all_jsonrpc()))

    def answered(self, replica: ReplicaState, doc: dict[str, Any]) -> bool:
        """A child's response to a job; False when it is no job's (a control call's, or stale)."""
        job = self.sent.get((replica.id, str(doc.get("request_id"))))
        if job is None or job.token != replica.token:
            return False
        self._release(job)
        data, err = answer_of(doc)
        if err is None:
            replica.served += 1
        self.finish(job, data, err)
        self.pump()
        return True

    def _release(self, job: ClusterJob) -> None:
        if job.replica is not None:
            self.sent.pop((job.replica.id, job.rid), None)
            if job in job.replica.running:
                job.replica.running.remove(job)

    def lost(self, replica: ReplicaState, token: str, reason: str) -> None:
        """The incarnation `token` of `replica` is gone: its jobs run again elsewhere or are answered lost."""
        for job in [j for j in replica.running if j.token == token]:
            self._release(job)
            where = f"replica {replica.id} (node {str(replica.info.get('node'))[:12]}, {replica.info.get('device')})"
            if job.retry and job.tries < MAX_TRIES and self.accepting:
                job.session.log(f"{where} was lost: {reason}; running the job once more", "warning")
                job.replica = job.token = None
                self.enqueue(job, avoid=replica.id, first=True)
                if job.parent is None:
                    self.transition(job, "queued")
            else:
                msg = f"the job's {where} was lost while running it: {reason}"
                if job.retry:
                    msg += f"; it already ran {job.tries} times"
                self.finish(job, None, WorkerLost(msg, data={"replica": replica.public()}))
        self.pump()

    # ---- the end of a job ------------------------------------------------------------------------

    def finish(self, job: ClusterJob, data: Any, err: WorkerError | None) -> None:
        """Answer `job` once (a part of a spread batch answers to its batch)."""
        if job.answered:
            return
        job.answered = True
        self.front.router.remove(job)
        self._release(job)
        if job.replica is not None and isinstance(data, dict):
            data["replica"] = job.replica.public()
        if job.replica is not None and err is not None and isinstance(err.data, dict):
            err.data.setdefault("replica", job.replica.public())
        if job.parent is not None:
            job.parent.part_done(job, data, err)
            return
        self.close(job, data, err)

    def close(self, job: ClusterJob | Spread, data: Any, err: WorkerError | None) -> None:
        """Final status, ledger, then the answer: the order a single worker keeps."""
        if job.timer is not None:
            job.timer.cancel()
        s = job.session
        s.finished_at = time.time()
        if isinstance(data, dict) and isinstance(data.get("performance"), dict):
            s.performance = dict(data["performance"])
        if err is not None:
            s.error, s.error_code = err.message, err.code
            s.log(f"{FINAL_OF.get(err.code, 'failed')}: {err.message}", "warning" if err.code in FINAL_OF else "error")
        self.transition(job, "completed" if err is None else FINAL_OF.get(err.code, "failed"))
        self.active.pop(s.session_id, None)
        if len(self.records) > KEEP_FINISHED + len(self.active):
            for sid in [k for k in self.records if k not in self.active][: len(self.records) - len(self.active) - KEEP_FINISHED]:
                del self.records[sid]
        job.sink(encode_error(job.call, err) if err is not None else encode_success(job.call, data))

    def transition(self, job: ClusterJob | Spread, status: str) -> None:
        s = job.session
        if s.status == status and s.transitions:
            return
        if status in ORDER and s.status in ORDER and status != "queued" and ORDER[status] < ORDER[s.status]:
            return  # a spread batch's parts report "running" after one already postprocesses
        s.status = status
        if status in ("loading", "running") and s.started_at is None:
            s.started_at = time.time()
        s.transitions.append({"status": status, "time": time.time()})
        f = self.front
        try:
            f.ledger.record(s, status)
        except Exception:  # noqa: BLE001  (the ledger must never cost the job)
            log.exception("ledger record failed for %s", s.session_id)
        data: dict[str, Any] = {"status": status, "session_id": s.session_id, "progress": s.progress()}
        if s.error_code and status in FINAL:
            data["error_code"] = s.error_code
        f.write(encode_event(job.call, "session_status", data, notification=all_jsonrpc()))

    # ---- control -------------------------------------------------------------------------------

    def cancel_waiting(self, job: ClusterJob | Spread, reason: str = "cancelled") -> bool:
        """Drop a job (or the parts of a batch) still waiting at the front; True if it was all there."""
        parts = job.parts if not isinstance(job, ClusterJob) else [job]
        dropped = [p for p in parts if not p.answered and p.replica is None and self.front.router.remove(p)]
        err: WorkerError = TimedOut("the job timed out while waiting in the queue") if reason == "timeout" else Cancelled("the job was cancelled before it started")
        for p in dropped:
            self.finish(p, None, err)
        return len(dropped) == len(parts)

    def _expire(self, job: ClusterJob | Spread) -> None:
        """A job still at the front when its timeout passes; one already sent has the rest of its
        timeout at the child, which answers `timeout` itself."""
        with self.front.lock:
            if job.session.status not in FINAL:
                self.cancel_waiting(job, "timeout")

    def close_queue(self) -> None:
        """Shutdown: the jobs still at the front never start."""
        for q in list(self.front.router.waiting):
            self.finish(q.job, None, ShuttingDown("the worker is shutting down; this job never started"))

    def running(self) -> list[ClusterJob]:
        return [j for r in self.front.router.replicas for j in r.running]
