"""The session ledger: every job's record in sdworker.db, so a restarted worker can still answer for it.

Why it exists: the in-memory SessionRegistry dies with the process. A host that lost the worker
(crash, kill -9, power cut) asks the next worker "what became of session s1?"; the ledger answers:
completed (with its outputs), failed (with its error), or `interrupted` when the run that owned it
ended while it was queued or running.

How it stays cheap and harmless:
- The job path only snapshots the session and puts it on a queue; one writer thread commits
  whatever has piled up in one transaction (one fsync for several transitions).
- A final transition (completed, failed, ...) waits, bounded, for its commit: the ledger holds a
  job's end before the host reads its answer, so an answered job is never reported interrupted.
- Any failure is logged to stderr (rate-limited) and swallowed: the ledger never costs a job.
- Nothing here runs before the ready event: the writer thread opens the database lazily.

Tables (migration 2 in store/db.py): `sessions`, one row per job (keyed by run id + sequence, since
a host may reuse a session_id in a later run), and `session_transitions`, one row per status change.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import sqlite3
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

import orjson

from ..jobs.sessions import ACTIVE, FINAL, iso
from ..limits import base64_decoded_size
from .db import Database

if TYPE_CHECKING:
    from ..jobs.sessions import Session

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"
MAX_LOG_LINES = 200  # per session, the newest kept
TRIM_EVERY = 100  # inserts between retention passes
FINAL_WAIT_S = 2.0  # how long a job's end waits for its commit before answering anyway
_BATCH = 256  # most queued writes committed in one transaction

_ACTIVE_SQL = "(" + ", ".join(f"'{s}'" for s in ACTIVE) + ")"

# ---- request elision -----------------------------------------------------------------------------------

IMAGE_KEYS = frozenset({"init_image", "mask_image", "image", "images", "conditioning_image", "control_image", "ip_adapter_image"})
_B64_CHARS = re.compile(r"[A-Za-z0-9+/=_\-\r\n]+")  # no spaces: prose is never taken for an image
_PATH_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_STRING = 20_000  # longer strings (not images) are cut in the stored request


def _image_placeholder(text: str) -> str | None:
    """'<image: N bytes>' when `text` is base64 image data (data: URL or bare), else None."""
    if len(text) < 4096 and text.lower().rstrip().endswith(_PATH_EXT):
        return None  # a path: worth keeping as is
    body = text
    if text.startswith("data:"):
        body = text.partition(",")[2]
    elif not _B64_CHARS.fullmatch(text[:4096]):
        return None
    return f"<image: {base64_decoded_size(body)} bytes>"


def elide(value: Any, key: str | None = None, depth: int = 0) -> Any:
    """The request as stored: base64 images replaced by a placeholder, very long strings cut."""
    if isinstance(value, str):
        if (key in IMAGE_KEYS and len(value) > 64) or len(value) >= 256:
            placeholder = _image_placeholder(value)
            if placeholder is not None:
                return placeholder
        if len(value) > MAX_STRING:
            return value[:MAX_STRING] + f"...<cut {len(value) - MAX_STRING} chars>"
        return value
    if depth > 64:
        return "<too deep>"
    if isinstance(value, dict):
        return {str(k): elide(v, str(k).lower(), depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [elide(v, key, depth + 1) for v in value]
    return value


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _pid_alive(pid: int) -> bool:
    try:
        import psutil

        return bool(psutil.pid_exists(pid))
    except Exception:  # cannot tell: assume alive, so a live run is never marked interrupted
        return True


# ---- the ledger ----------------------------------------------------------------------------------------

Op = Callable[[sqlite3.Connection], None]


class SessionLedger:
    """Writes session records through one background thread; reads them back for earlier runs."""

    def __init__(self, db: Database, keep: int = 10000, days: float | None = None, run_id: str | None = None):
        self.db = db
        self.keep = max(0, int(keep))
        self.days = days if days and days > 0 else None
        self.run_id = run_id or uuid.uuid4().hex
        self.pid = os.getpid()
        self._q: queue.SimpleQueue[tuple[Op | None, threading.Event | None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._inserts = 0
        self._closed = False
        self._failures = 0
        self._last_failure_log = 0.0
        self.interrupted_at_start = 0  # sessions of earlier runs marked interrupted by start()
        self._recovered: threading.Event | None = None  # set once start()'s recovery has run

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Mark what earlier runs left active as interrupted, then trim. Runs on the writer thread."""
        self._recovered = threading.Event()
        done = self._recovered
        self._put(self._recover)
        self._put(self._trim)
        self._q.put((None, done))  # reads wait for this, not for every later write

    def trim(self) -> None:
        """Queue a retention pass (also run at start and every TRIM_EVERY inserts)."""
        self._put(self._trim)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is committed (or has failed). False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._q.put((None, done))
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Commit what is queued and stop the writer thread; later records are dropped."""
        self.flush(timeout)
        self._closed = True
        if self._thread is not None:
            self._q.put((None, None))
            self._thread.join(timeout)

    # ---- writes (called by the job engine at every transition) --------------------------------------

    def record(self, session: "Session", status: str) -> None:
        """Snapshot `session` at its transition to `status`; a final one waits for its commit."""
        if self._closed:
            return
        now = time.time()
        snap = self._snapshot(session)
        if session.ledger_key is None:
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
            self._put(lambda conn: self._insert(conn, head, snap, status, now))
        else:
            key = session.ledger_key
            self._put(lambda conn: self._update(conn, key, session.session_id, snap, status, now))
        if status in FINAL and not self.flush(FINAL_WAIT_S):
            log.warning("ledger: the end of session %s was not committed within %.1f s; answering anyway", session.session_id, FINAL_WAIT_S)

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

    def _insert(self, conn: sqlite3.Connection, head: dict[str, Any], snap: dict[str, Any], status: str, now: float) -> None:
        request = _json(elide(head["request"])) if head["request"] is not None else None
        conn.execute(
            "INSERT INTO sessions (id, session_id, request_id, method, model_id, device_id, priority, status, created_at, "
            "request, run_id, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (head["id"], head["session_id"], head["request_id"], head["method"], snap["model_id"], snap["device_id"],
             head["priority"], status, head["created_at"], request, self.run_id, self.pid),
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
            f"SELECT DISTINCT run_id, pid FROM sessions WHERE status IN {_ACTIVE_SQL} AND run_id != ?", (self.run_id,)
        ).fetchall()
        now = time.time()
        for run_id, pid in runs:
            if pid != self.pid and _pid_alive(pid):
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
            self.interrupted_at_start += len(rows)
        if self.interrupted_at_start:
            log.warning("ledger: %d session(s) of earlier runs marked interrupted", self.interrupted_at_start)

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

    # ---- the writer thread ----------------------------------------------------------------------------

    def _put(self, op: Op) -> None:
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="session-ledger", daemon=True)
                    self._thread.start()
        self._q.put((op, None))

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            batch = [item]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            ops = [op for op, _ in batch if op is not None]
            if ops:
                self._commit(ops)
            for op, done in batch:
                if done is not None:
                    done.set()
            if any(op is None and done is None for op, done in batch):
                return

    def _commit(self, ops: list[Op]) -> None:
        try:
            with self.db.transaction() as conn:
                for op in ops:
                    op(conn)
            return
        except Exception as exc:
            if len(ops) == 1:
                self._failed(exc)
                return
        for op in ops:  # one bad write must not take the others with it
            try:
                with self.db.transaction() as conn:
                    op(conn)
            except Exception as exc:
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        now = time.monotonic()
        if now - self._last_failure_log >= 60 or self._failures == 1:
            self._last_failure_log = now
            log.error("ledger write failed (%d so far; jobs go on): %s: %s", self._failures, type(exc).__name__, exc)

    # ---- reads -------------------------------------------------------------------------------------

    def _row(self, session_id: str) -> sqlite3.Row | None:
        if self._recovered is not None:  # an earlier run's session is read after its recovery
            self._recovered.wait(FINAL_WAIT_S)
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
            self._failed(exc)
            return None
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
            "performance": orjson.loads(row["performance"]),
            "logs": orjson.loads(row["logs"]),
            "request": orjson.loads(row["request"]) if row["request"] else None,
            "transitions": transitions,
            "source": "ledger",
            "run_id": row["run_id"],
            "pid": row["pid"],
            "current_run": row["run_id"] == self.run_id,
        }

    def count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])
