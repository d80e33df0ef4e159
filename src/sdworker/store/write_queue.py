"""One thread that commits queued database writes in order, and keeps the ones it could not make.

Why: the session ledger must never block a job on the disk, and must never be wrong about a job
either. A write that fails because the disk is full, the file is locked by another process or the
file system returns an I/O error is not dropped: it stays queued, in order, and is tried again
(every RETRY_S, and before any newer write), so the ledger catches up as soon as it can write
again, and says so on stderr. Only a write that can never succeed (a constraint it breaks, a bug)
is dropped, logged, so it cannot hold back the others forever.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

from ..errors import WorkerError
from .db import Database

log = logging.getLogger(__name__)

Op = Callable[[sqlite3.Connection], None]

RETRY_S = 1.0  # how often writes that failed are tried again while nothing new comes
MAX_BACKLOG = 10_000  # writes kept for a retry at most (each holds a session snapshot); past it the oldest are dropped, logged
_BATCH = 256  # most queued writes committed in one transaction

# sqlite3.OperationalError messages of conditions that pass: full disk, I/O error, another writer.
_TRANSIENT = ("full", "disk i/o", "locked", "busy", "unable to open", "readonly", "read-only", "no space")


def transient(exc: BaseException) -> bool:
    """Could this write succeed later, unchanged (the disk or the lock frees up)?"""
    if isinstance(exc, (WorkerError, OSError)):  # db.DatabaseError (cannot open/create), busy
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(word in text for word in _TRANSIENT)
    return False


class WriteQueue:
    """Ops (callables taking a connection) committed in order by one daemon thread."""

    def __init__(self, db: Database, name: str = "db-writer"):
        self.db = db
        self.name = name
        self._q: queue.SimpleQueue[tuple[Op | None, threading.Event | None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._backlog: list[Op] = []  # writes that failed for a passing reason, oldest first (writer thread only)
        self.failures = 0  # failed attempts so far (logged rate-limited)
        self.dropped = 0  # writes given up on
        self._last_failure_log = 0.0
        self._failing_since: float | None = None  # wall time of the first failure of the current spell

    # ---- callers ------------------------------------------------------------------------------------

    @property
    def behind(self) -> int:
        """Writes waiting for a retry (0: everything queued so far was committed or dropped)."""
        return len(self._backlog)

    def put(self, op: Op) -> None:
        self._start()
        self._q.put((op, None))

    def mark(self) -> threading.Event:
        """An event set once everything queued before it has been tried (committed, kept or dropped)."""
        done = threading.Event()
        self._start()
        self._q.put((None, done))
        return done

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far has been tried once more. False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return True
        return self.mark().wait(timeout)

    def stop(self, timeout: float = 5.0) -> int:
        """Try what is queued once more, stop the thread; returns the writes still not made."""
        self.flush(timeout)
        if self._thread is not None:
            self._q.put((None, None))
            self._thread.join(timeout)
        left = len(self._backlog)
        if left:
            since = time.strftime("%H:%M:%S", time.localtime(self._failing_since or time.time()))
            log.error("%s: %d write(s) could not be made before exit (failing since %s); what they record is lost", self.name, left, since)
        return left

    # ---- the thread -------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                item = self._q.get(timeout=RETRY_S) if self._backlog else self._q.get()
            except queue.Empty:
                self._commit([])  # nothing new: try the backlog again
                continue
            batch = [item]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            ops = [op for op, _ in batch if op is not None]
            if ops or self._backlog:
                self._commit(ops)
            for _, done in batch:
                if done is not None:
                    done.set()
            if any(op is None and done is None for op, done in batch):
                return

    def _commit(self, new: list[Op]) -> None:
        ops = self._backlog + new
        self._backlog = []
        if not ops:
            return
        try:
            self._run(ops)
            self._caught_up(len(ops))
            return
        except Exception as exc:
            if transient(exc):
                self._keep(ops, exc)
                return
            if len(ops) == 1:
                self._drop(exc)
                return
        made = 0
        for i, op in enumerate(ops):  # one bad write must not take the others with it
            try:
                self._run([op])
                made += 1
            except Exception as exc:
                if transient(exc):  # keep it and everything after it, in order
                    self._keep(ops[i:], exc)
                    return
                self._drop(exc)
        self._caught_up(made)

    def _run(self, ops: list[Op]) -> None:
        with self.db.transaction() as conn:
            for op in ops:
                op(conn)

    # ---- bookkeeping ------------------------------------------------------------------------------

    def _keep(self, ops: list[Op], exc: BaseException) -> None:
        if len(ops) > MAX_BACKLOG:
            cut = len(ops) - MAX_BACKLOG
            self.dropped += cut
            log.error("%s: %d delayed write(s) dropped (more than %d waiting)", self.name, cut, MAX_BACKLOG)
            ops = ops[cut:]
        self._backlog = ops
        if self._failing_since is None:
            self._failing_since = time.time()
        self._failed(exc, f"{len(ops)} write(s) kept, retried every {RETRY_S:g} s")

    def _drop(self, exc: BaseException) -> None:
        self.dropped += 1
        self._failed(exc, "write dropped")

    def _failed(self, exc: BaseException, what: str) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_failure_log >= 60 or self.failures == 1:
            self._last_failure_log = now
            log.error("ledger write failed (%d so far; jobs go on; %s): %s: %s", self.failures, what, type(exc).__name__, exc)

    def _caught_up(self, count: int) -> None:
        if self._failing_since is None:
            return
        since = time.strftime("%H:%M:%S", time.localtime(self._failing_since))
        self._failing_since = None
        log.warning("%s: writing again; the %d write(s) delayed since %s are committed now", self.name, count, since)
