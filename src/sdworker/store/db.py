"""The worker's embedded SQLite database: `sdworker.db` under --data-dir, or in memory without one.

One file holds every table the worker keeps (inference presets, migration 1; the session ledger,
migrations 2 and 3). What keeps it consistent when the process dies at any instant:

- WAL journal (`PRAGMA journal_mode=WAL`): a write appends to sdworker.db-wal and commits with
  one commit record; a crash before that record leaves the transaction out, whole. Readers see
  the last committed snapshot and never block the writer, nor it them (also across processes).
- `synchronous=FULL`: the WAL is fsynced at every commit, so a commit the worker has answered
  survives a power cut too, not only a killed process. Writes are rare; the fsync is cheap.
- Every write goes through `Database.transaction()`: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on
  any exception. Nothing writes in autocommit mode, so no change is ever half applied.
- The schema version is `PRAGMA user_version`. MIGRATIONS is an ordered list; each one runs in
  its own transaction together with the bump of user_version (the header write is part of the
  transaction), so a crash mid-migration leaves the previous version intact, and the next start
  runs it again. A database newer than this code is refused rather than guessed at.
- `busy_timeout`: another process (a second worker on the same --data-dir, a backup tool) holding
  the write lock makes a writer wait up to that long instead of failing at once.

Nothing is opened at import or construction: the first read or write opens the file and runs the
migrations, so the worker's ready event never waits on the disk. No torch here.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import WorkerError

log = logging.getLogger(__name__)

DB_FILE = "sdworker.db"
MEMORY = ":memory:"
DEFAULT_BUSY_TIMEOUT_MS = 5000

Step = str | Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Migration:
    """Schema version `version`: its steps (SQL statements or callables) run in one transaction."""

    version: int
    name: str
    steps: tuple[Step, ...]


# The whole schema history of sdworker.db, oldest first. Append only: never edit a released step
# (a database that already ran it would not run it again). Versions are 1, 2, 3, ... in order.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "inference_configurations",
        (
            # The `inference_configurations` collection of the existing backend, field for field.
            # model_specific_params and extra_fields are JSON objects; extra_fields keeps any other
            # top-level field of an imported document so an export gives it back; mongo_id is the
            # document's `_id` as Extended JSON ({"$oid": ...}).
            """
            CREATE TABLE inference_configurations (
                id                    TEXT PRIMARY KEY NOT NULL CHECK (length(id) > 0),
                model_id              TEXT NOT NULL CHECK (length(model_id) > 0),
                base_model            TEXT NOT NULL CHECK (length(base_model) > 0),
                configuration_type    TEXT NOT NULL CHECK (configuration_type IN ('quality', 'speed')),
                steps                 INTEGER NOT NULL CHECK (typeof(steps) = 'integer' AND steps >= 1),
                cfg_scale             REAL NOT NULL CHECK (cfg_scale >= 0),
                sampler               TEXT,
                scheduler             TEXT,
                model_specific_params TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(model_specific_params)),
                created_at            TEXT NOT NULL,
                updated_at            TEXT NOT NULL,
                mongo_id              TEXT,
                extra_fields          TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(extra_fields)),
                UNIQUE (model_id, configuration_type)
            )
            """,
            "CREATE INDEX ix_inference_configurations_model_id ON inference_configurations (model_id)",
            "CREATE INDEX ix_inference_configurations_base_model ON inference_configurations (base_model)",
        ),
    ),
    # The session ledger (store/ledger.py): one row per job, keyed by run id + sequence because a
    # host may reuse a session_id in a later run; one row per status change. Times are epoch seconds.
    Migration(
        2,
        "session ledger",
        (
            """
            CREATE TABLE sessions (
                id            TEXT PRIMARY KEY NOT NULL,
                session_id    TEXT NOT NULL,
                request_id    TEXT,
                method        TEXT NOT NULL,
                model_id      TEXT,
                device_id     TEXT,
                priority      INTEGER NOT NULL DEFAULT 0,
                status        TEXT NOT NULL,
                created_at    REAL NOT NULL,
                started_at    REAL,
                finished_at   REAL,
                step          INTEGER NOT NULL DEFAULT 0,
                total_steps   INTEGER NOT NULL DEFAULT 0,
                request       TEXT CHECK (request IS NULL OR json_valid(request)),
                performance   TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(performance)),
                outputs       TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(outputs)),
                logs          TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(logs)),
                error         TEXT,
                error_code    TEXT,
                run_id        TEXT NOT NULL,
                pid           INTEGER NOT NULL
            )
            """,
            "CREATE INDEX ix_sessions_session_id ON sessions (session_id, created_at)",
            "CREATE INDEX ix_sessions_status ON sessions (status)",
            "CREATE INDEX ix_sessions_created_at ON sessions (created_at)",
            """
            CREATE TABLE session_transitions (
                seq           INTEGER PRIMARY KEY,
                session_key   TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                session_id    TEXT NOT NULL,
                status        TEXT NOT NULL,
                time          REAL NOT NULL
            )
            """,
            "CREATE INDEX ix_session_transitions_key ON session_transitions (session_key, seq)",
        ),
    ),
    # The start time of the process that owns a session (psutil's create_time, epoch seconds): with
    # the pid it tells a run that is still alive from a dead one whose pid another process reuses.
    # NULL in rows written before this migration (then the pid alone decides, as it did).
    Migration(
        3,
        "ledger process start times",
        ("ALTER TABLE sessions ADD COLUMN pid_started REAL",),
    ),
)


class DatabaseError(WorkerError):
    """The database cannot be used (unreadable file, newer schema, disk error)."""

    code = "internal_error"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Database:
    """Connections, transactions and migrations of one SQLite database (a file, or memory).

    File: one connection per thread (WAL readers run side by side), writes serialized in this
    process by a lock and across processes by SQLite's write lock (BEGIN IMMEDIATE + busy_timeout).
    Memory: one connection shared by all threads, every use under the lock; gone at exit.
    """

    def __init__(
        self,
        path: Path | None,
        migrations: Sequence[Migration] = MIGRATIONS,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ):
        self.path = Path(path) if path is not None else None
        self.migrations = tuple(migrations)
        for i, m in enumerate(self.migrations, start=1):
            if m.version != i:
                raise ValueError(f"migration {m.name!r} has version {m.version}; expected {i} (versions are 1, 2, 3, ...)")
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()  # writes (file) or everything (memory)
        self._open_lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._shared: sqlite3.Connection | None = None
        self._ready = False
        self._closed = False
        self._savepoints = itertools.count(1)

    # ---- facts ---------------------------------------------------------------------------------------

    @property
    def location(self) -> str:
        """The file path, or ':memory:'."""
        return str(self.path) if self.path is not None else MEMORY

    @property
    def persistent(self) -> bool:
        return self.path is not None

    @property
    def latest_version(self) -> int:
        return self.migrations[-1].version if self.migrations else 0

    def schema_version(self) -> int:
        with self.read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    # ---- connections ---------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        target = MEMORY
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(f"cannot create the data dir {self.path.parent}: {exc.strerror or exc}") from exc
            target = str(self.path)
        try:
            # isolation_level=None: no implicit transactions; transaction() says BEGIN/COMMIT itself.
            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            if self.path is not None:
                mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
                if mode != "wal":
                    log.warning("database %s: journal_mode is %s, not wal (file system without shared memory?)", target, mode)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot open the database {target}: {exc}") from exc
        self._conns.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise DatabaseError(f"the database {self.location} is closed")
        if not self._ready:
            self._open()
        if self.path is None:
            assert self._shared is not None
            return self._shared
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._open_lock:
                conn = self._connect()
            self._local.conn = conn
        return conn

    def _open(self) -> None:
        with self._open_lock:
            if self._ready:
                return
            conn = self._connect()
            if self.path is None:
                self._shared = conn
            else:
                self._local.conn = conn
            with self._lock:
                self._migrate(conn)
            self._ready = True
            log.debug("database %s at schema version %d", self.location, self.latest_version)

    def close(self) -> None:
        """Close every connection (a WAL checkpoint happens on the last one). Later use raises."""
        with self._open_lock, self._lock:
            self._closed = True
            for conn in self._conns:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()
            self._shared = None

    # ---- transactions --------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception. Nested: a SAVEPOINT."""
        conn = self._conn()
        with self._lock:
            if conn.in_transaction:
                name = f"sp_{next(self._savepoints)}"
                conn.execute(f"SAVEPOINT {name}")
                try:
                    yield conn
                except BaseException:
                    conn.execute(f"ROLLBACK TO {name}")
                    conn.execute(f"RELEASE {name}")
                    raise
                conn.execute(f"RELEASE {name}")
                return
            self._execute_begin(conn, "BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read: one snapshot for every statement inside (a deferred transaction)."""
        conn = self._conn()
        if self.path is None:
            with self._lock:
                yield from self._read_on(conn)
        else:
            yield from self._read_on(conn)

    def _read_on(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        if conn.in_transaction:  # inside this thread's write: read what it wrote
            yield conn
            return
        self._execute_begin(conn, "BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _execute_begin(self, conn: sqlite3.Connection, sql: str) -> None:
        try:
            conn.execute(sql)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise WorkerError(
                    f"the database {self.location} is locked by another process for over {self.busy_timeout_ms} ms; retry",
                    code="busy",
                ) from exc
            raise

    # ---- migrations ----------------------------------------------------------------------------------

    def _migrate(self, conn: sqlite3.Connection) -> None:
        try:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"{self.location} is not a usable SQLite database: {exc}") from exc
        if current > self.latest_version:
            raise DatabaseError(
                f"the database {self.location} has schema version {current}, newer than this sdworker knows "
                f"({self.latest_version}); use a newer sdworker or another --data-dir"
            )
        for m in self.migrations:
            if m.version <= current:
                continue
            self._execute_begin(conn, "BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while this one waited for the write lock.
                if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= m.version:
                    conn.execute("COMMIT")
                    continue
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                for step in m.steps:
                    if callable(step):
                        step(conn)
                    else:
                        conn.execute(step)
                conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)", (m.version, m.name, _now()))
                conn.execute(f"PRAGMA user_version = {int(m.version)}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            log.info("database %s migrated to version %d (%s)", self.location, m.version, m.name)
