"""The session ledger: every job's record in sdworker.db, so a restarted worker can still answer for it.

Why it exists: the in-memory SessionRegistry dies with the process. A host that lost the worker
(crash, kill -9, power cut) asks the next worker "what became of session s1?"; the ledger answers:
completed (with its outputs), failed (with its error), or `interrupted` when the run that owned it
ended while it was queued or running.

How it stays cheap, harmless and right:
- The job path only snapshots the session and puts it on a queue; one writer thread
  (store/write_queue.py) commits whatever has piled up in one transaction (one fsync for several).
- A job's first record (`queued`) and its end (completed, failed, ...) wait, bounded, for their
  commit: a job the host was told is queued is known after a crash, and an answered job is never
  reported interrupted.
- A write that fails because the disk is full or the file is locked is kept, in order, and retried
  until it is made (logged when it fails and when it catches up), so a record is late, never wrong.
  The ledger never costs a job: it is never fatal, and it stops waiting on a disk that fails.
- A run is known by its pid and that process's start time, so a pid reused by another process
  never keeps a dead run's sessions "running".
- Nothing here runs before the ready event: the writer thread opens the database lazily.

Tables (migrations 2 and 3 in store/db.py): `sessions`, one row per job (keyed by run id + sequence,
since a host may reuse a session_id in a later run), and `session_transitions`, one per status change.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from ..jobs.sessions import ACTIVE, FINAL, iso
from .db import Database
from .elide import elide
from .write_queue import WriteQueue

if TYPE_CHECKING:
    from ..jobs.sessions import Session

__all__ = ["INTERRUPTED", "SessionLedger", "elide"]

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"
MAX_LOG_LINES = 200  # per session, the newest kept
TRIM_EVERY = 100  # inserts between retention passes
FINAL_WAIT_S = 2.0  # how long a job's first record and its end wait for their commit
# How long a read of an earlier run's session waits for start()'s recovery. Recovery is one UPDATE
# (milliseconds); the bound is for a disk that hangs. A short bound made a busy machine answer
# "queued" for a dead run's job instead of "interrupted".
RECOVERY_WAIT_S = 30.0
MAX_LISTED = 1000  # interrupted sessions listed at most (newest first)
START_TIME_SLACK_S = 1.0  # a process start time read twice may differ by clock adjustments

_ACTIVE_SQL = "(" + ", ".join(f"'{s}'" for s in ACTIVE) + ")"


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def process_start(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), None when there is none or it cannot be told."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


def run_alive(pid: int, started: float | None) -> bool:
    """Is the process that wrote these rows still running? Its pid alone is not enough: pids are reused."""
    try:
        import psutil

        if not psutil.pid_exists(pid):
            return False
        if started is None:  # a row from before start times were kept: the pid is all there is
            return True
        return abs(psutil.Process(pid).create_time() - started) <= START_TIME_SLACK_S
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ == "NoSuchProcess":
            return False
        return True  # cannot tell: assume alive, so a live run is never marked interrupted


# ---- the ledger ----------------------------------------------------------------------------------------


class SessionLedger:
    """Writes session records through one background thread; reads them back for earlier runs."""

    def __init__(self, db: Database, keep: int = 10000, days: float | None = None, run_id: str | None = None):
        self.db = db
        self.keep = max(0, int(keep))
        self.days = days if days and days > 0 else None
        self.run_id = run_id or uuid.uuid4().hex
        self.pid = os.getpid()
        self._started: tuple[int, float | None] | None = None  # (pid, its start time), read once
        self.writes = WriteQueue(db, "session-ledger")
        self._seq = itertools.count(1)
        self._inserts = 0
        self._closed = False
        self.interrupted_at_start = 0  # sessions of earlier runs marked interrupted by start()
        self._recovered: threading.Event | None = None  # set once start()'s recovery has run

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Mark what earlier runs left active as interrupted, then trim. Runs on the writer thread."""
        self.writes.put(self._recover)
        self.writes.put(self._trim)
        self._recovered = self.writes.mark()  # reads wait for this, not for every later write

    def trim(self) -> None:
        """Queue a retention pass (also run at start and every TRIM_EVERY inserts)."""
        self.writes.put(self._trim)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far has been tried (committed, or kept for a retry). False on timeout."""
        return self.writes.flush(timeout)

    @property
    def behind(self) -> int:
        """Writes that failed (full disk, locked file) and wait for a retry."""
        return self.writes.behind

    def close(self, timeout: float = 5.0) -> None:
        """Commit what is queued and stop the writer thread; later records are dropped."""
        self._closed = True
        self.writes.stop(timeout)

    # ---- writes (called by the job engine at every transition) --------------------------------------

    def record(self, session: "Session", status: str) -> None:
        """Snapshot `session` at its transition to `status`; its first record and its end wait for their commit."""
        if self._closed:
            return
        now = time.time()
        snap = self._snapshot(session)
        first = session.ledger_key is None
        if first:
            session.ledger_key = f"{self.run_id}:{next(self._seq)}"
            key = session.ledger_key
            head = {
                "id": key,
                "session_id": session.session_id,
                "request_id": session.request_id,
                "method": session.method,
                "priority": session.priority,
                "created_at": session.created_at,
                "request": session.request,
            }
            self.writes.put(lambda conn: self._insert(conn, head, snap, status, now))
        else:
            key = session.ledger_key
            self.writes.put(lambda conn: self._update(conn, key, session.session_id, snap, status, now))
        # While the disk fails, a first record does not wait for a commit that cannot come (its retry
        # does); a job's end always waits, bounded, so its answer never outruns a working disk.
        wait = status in FINAL or (first and not self.writes.behind)
        if wait and not self.flush(FINAL_WAIT_S):
            log.warning("ledger: session %s (%s) was not committed within %.1f s; going on", session.session_id, status, FINAL_WAIT_S)

    @staticmethod
    def _snapshot(s: "Session") -> dict[str, Any]:
        """The session's changing fields now (the writer thread runs later, the job goes on)."""
        return {
            "status": s.status,
            "model_id": s.model_id,
            "device_id": s.device_id,
            "started_at": s.started_at,
            "finished_at": s.finished_at,
            "step": s.step,
            "total_steps": s.total_steps,
            "performance": dict(s.performance),
            "outputs": list(s.outputs),
            "logs": s.logs[-MAX_LOG_LINES:],
            "error": s.error,
            "error_code": s.error_code,
        }

    def _pid_started(self) -> float | None:
        """This run's process start time (read on the writer thread, once per pid)."""
        if self._started is None or self._started[0] != self.pid:
            self._started = (self.pid, process_start(self.pid))
        return self._started[1]

    def _insert(self, conn: sqlite3.Connection, head: dict[str, Any], snap: dict[str, Any], status: str, now: float) -> None:
        request = _json(elide(head["request"])) if head["request"] is not None else None
        conn.execute(
            "INSERT INTO sessions (id, session_id, request_id, method, model_id, device_id, priority, status, created_at, "
            "request, run_id, pid, pid_started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (head["id"], head["session_id"], head["request_id"], head["method"], snap["model_id"], snap["device_id"],
             head["priority"], status, head["created_at"], request, self.run_id, self.pid, self._pid_started()),
        )
        self._update(conn, head["id"], head["session_id"], snap, status, now)
        self._inserts += 1
        if self._inserts % TRIM_EVERY == 0:
            self._trim(conn)

    @staticmethod
    def _update(conn: sqlite3.Connection, key: str, session_id: str, snap: dict[str, Any], status: str, now: float) -> None:
        conn.execute(
            "UPDATE sessions SET status = ?, model_id = ?, device_id = ?, started_at = ?, finished_at = ?, step = ?, "
            "total_steps = ?, performance = ?, outputs = ?, logs = ?, error = ?, error_code = ? WHERE id = ?",
            (status, snap["model_id"], snap["device_id"], snap["started_at"], snap["finished_at"], snap["step"],
             snap["total_steps"], _json(snap["performance"]), _json(snap["outputs"]), _json(snap["logs"]),
             snap["error"], snap["error_code"], key),
        )
        conn.execute(
            "INSERT INTO session_transitions (session_key, session_id, status, time) VALUES (?, ?, ?, ?)",
            (key, session_id, status, now),
        )

    def _recover(self, conn: sqlite3.Connection) -> None:
        """Sessions left active by runs that are gone become `interrupted` (a live run is left alone)."""
        runs = conn.execute(
            f"SELECT DISTINCT run_id, pid, pid_started FROM sessions WHERE status IN {_ACTIVE_SQL} AND run_id != ?", (self.run_id,)
        ).fetchall()
        now = time.time()
        marked = 0
        for run_id, pid, started in runs:
            if pid != self.pid and run_alive(pid, started):
                log.info("ledger: run %s (pid %d) is still alive; its active sessions are left as they are", run_id, pid)
                continue
            rows = conn.execute(f"SELECT id, session_id FROM sessions WHERE run_id = ? AND status IN {_ACTIVE_SQL}", (run_id,)).fetchall()
            message = f"the worker (pid {pid}) ended before this session finished; it was not completed"
            for key, session_id in rows:
                conn.execute(
                    "UPDATE sessions SET status = ?, finished_at = ?, error = COALESCE(error, ?) WHERE id = ?",
                    (INTERRUPTED, now, message, key),
                )
                conn.execute(
                    "INSERT INTO session_transitions (session_key, session_id, status, time) VALUES (?, ?, ?, ?)",
                    (key, session_id, INTERRUPTED, now),
                )
            marked += len(rows)
        self.interrupted_at_start = marked  # set, not added: a retried pass counts once
        if marked:
            log.warning("ledger: %d session(s) of earlier runs marked interrupted", marked)

    def _trim(self, conn: sqlite3.Connection) -> None:
        """Retention: at most `keep` finished sessions, none older than `days` (active ones stay)."""
        removed = conn.execute(
            f"DELETE FROM sessions WHERE status NOT IN {_ACTIVE_SQL} AND id NOT IN "
            f"(SELECT id FROM sessions WHERE status NOT IN {_ACTIVE_SQL} ORDER BY created_at DESC LIMIT ?)",
            (self.keep,),
        ).rowcount
        if self.days is not None:
            cutoff = time.time() - self.days * 86400
            removed += conn.execute(
                f"DELETE FROM sessions WHERE status NOT IN {_ACTIVE_SQL} AND COALESCE(finished_at, created_at) < ?", (cutoff,)
            ).rowcount
        if removed:
            log.debug("ledger: %d old session(s) trimmed", removed)

    # ---- reads -------------------------------------------------------------------------------------

    def _wait_recovered(self) -> None:
        if self._recovered is not None:  # an earlier run's session is read after its recovery
            self._recovered.wait(RECOVERY_WAIT_S)

    def _row(self, session_id: str) -> sqlite3.Row | None:
        self._wait_recovered()
        with self.db.read() as conn:
            return conn.execute(
                "SELECT * FROM sessions WHERE session_id = ? ORDER BY created_at DESC, rowid DESC LIMIT 1", (session_id,)
            ).fetchone()

    def _transitions(self, key: str) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT status, time FROM session_transitions WHERE session_key = ? ORDER BY seq", (key,)).fetchall()
        return [{"status": r["status"], "time": iso(r["time"])} for r in rows]

    def lookup(self, session_id: str) -> dict[str, Any] | None:
        """The newest record of `session_id` in the Session.summary shape, plus what the ledger adds.

        None when the ledger has none, or cannot be read (logged): the caller answers "unknown".
        """
        try:
            row = self._row(session_id)
            if row is None:
                return None
            transitions = self._transitions(row["id"])
        except Exception as exc:
            log.error("ledger read failed: %s: %s", type(exc).__name__, exc)
            return None
        rec = self._summary(row)
        rec.update(
            performance=orjson.loads(row["performance"]),
            logs=orjson.loads(row["logs"]),
            request=orjson.loads(row["request"]) if row["request"] else None,
            transitions=transitions,
        )
        return rec

    def interrupted(self, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
        """Sessions that ended runs left unfinished (status `interrupted`), newest first, in the summary shape.

        For a host that lost its own state: what it sent to an earlier worker and never got an answer for.
        """
        try:
            self._wait_recovered()
            with self.db.read() as conn:
                rows = conn.execute(
                    "SELECT * FROM sessions WHERE status = ? ORDER BY finished_at DESC, rowid DESC LIMIT ?", (INTERRUPTED, limit)
                ).fetchall()
        except Exception as exc:
            log.error("ledger read failed: %s: %s", type(exc).__name__, exc)
            return []
        return [self._summary(row) for row in rows]

    def _summary(self, row: sqlite3.Row) -> dict[str, Any]:
        total, step, status = row["total_steps"], row["step"], row["status"]
        percent = 100.0 if status == "completed" else (round(100.0 * step / total, 1) if total else 0.0)
        return {
            "session_id": row["session_id"],
            "request_id": row["request_id"],
            "method": row["method"],
            "model_id": row["model_id"],
            "device_id": row["device_id"],
            "status": status,
            "priority": row["priority"],
            "created_at": iso(row["created_at"]),
            "started_at": iso(row["started_at"]),
            "finished_at": iso(row["finished_at"]),
            "progress": {"step": step, "total_steps": total, "percent": percent, "eta_seconds": None},
            "queue_position": None,
            "error": row["error"],
            "error_code": row["error_code"],
            "outputs": orjson.loads(row["outputs"]),
            "source": "ledger",
            "run_id": row["run_id"],
            "pid": row["pid"],
            "current_run": row["run_id"] == self.run_id,
        }

    def count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])
