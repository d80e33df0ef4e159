"""One thread per device runs its jobs one at a time, so GPU work never overlaps."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .context import JobContext
from ..errors import Cancelled, InternalError, OutOfMemory, WorkerError, is_oom

if TYPE_CHECKING:
    from .engine import Job, JobEngine
    from .queue import JobQueue

log = logging.getLogger(__name__)


def classify(exc: BaseException) -> WorkerError:
    """Map an unexpected exception to the error the host sees."""
    if isinstance(exc, WorkerError):
        return exc
    name = type(exc).__name__
    text = str(exc)
    if is_oom(exc):
        return OutOfMemory(f"out of memory: {text.splitlines()[0] if text else name}; lower the size or batch, or enable cpu_offload")
    return InternalError(f"internal error ({name}): {text.splitlines()[0] if text else 'no message'}")


class DeviceExecutor:
    def __init__(self, device_id: str, queue: "JobQueue[Job]", engine: "JobEngine"):
        self.device_id = device_id
        self.queue = queue
        self.engine = engine
        self.current: Job | None = None
        self._thread = threading.Thread(target=self._loop, name=f"executor-{device_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            self.current = job
            try:
                self._run(job)
            finally:
                self.current = None

    def _run(self, job: "Job") -> None:
        s = job.session
        ctx = JobContext(s, job.events, lambda sess, st: self.engine.status(sess, st, job), preview=job.preview)
        s.started_at = time.time()
        s.performance["queue_ms"] = round((time.perf_counter() - job.submitted) * 1000, 2)
        try:
            ctx.check_cancelled()
            self.engine.before_job()
            result = job.run(ctx)
        except WorkerError as exc:
            self.engine.finish(job, error=exc)
        except Exception as exc:  # anything else becomes internal_error; the worker lives on
            if not isinstance(exc, Cancelled):
                log.exception("job %s failed", s.session_id)
            self.engine.finish(job, error=classify(exc))
        else:
            self.engine.finish(job, result=result)
