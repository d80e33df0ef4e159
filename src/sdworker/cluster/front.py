"""The cluster front: the worker's own protocol on stdin/stdout, the jobs run by Ray replicas.

Lines are read, decoded and answered with the worker's protocol package, so a host sees the
same three forms, ids, events and errors as from one worker. Each call goes one of five ways:
answered here (ping, info, shutdown, session lists, presets), a job (queued here and routed,
jobs.py), session control (to the owning replica, sessions.py), every replica (aggregate.py),
or any one replica (model listings, validation, parse_prompt, ...).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson

from .. import PROTOCOL_VERSION, __version__, stop_signals
from ..errors import Busy, InternalError, InvalidRequest, WorkerError, WorkerLost
from ..protocol import events
from ..protocol.envelopes import Call, Form, Rejection, decode_line, encode_error, encode_success, guess_form, ready_event
from ..protocol.framing import LineWriter, Oversize, read_lines
from ..settings import Settings
from ..store.db import DB_FILE, Database
from ..store.ledger import SessionLedger
from . import sessions
from .aggregate import BROADCAST, CHANGES, Gather, merge, track_models
from .jobs import JobBook, Sink
from .local import PRESET_WRITES, VIA_REPLICA, PresetsHolder, build_registry
from .pool import ReplicaPool
from .router import ReplicaState, Router
from .wire import answer_of, child_line, is_answer, native_line

log = logging.getLogger(__name__)

Answer = Callable[[Any, "WorkerError | None"], None]
START_WARN_S = 30.0
_RID = re.compile(rb'"(?:request_id|id)"\s*:\s*("[^"]{1,200}"|-?\d{1,18})')


class _Batch:
    """The answers of one JSON-RPC batch, written as one array when the last one is in."""

    def __init__(self, front: Front, expected: int):
        self.front = front
        self.pending = expected
        self.answers: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, answer: dict[str, Any] | None) -> None:
        with self.lock:
            if answer is not None:
                self.answers.append(answer)
            self.pending -= 1
            done = self.pending == 0
        if done and self.answers:
            self.front.writer.write(self.answers)


class Front:
    def __init__(self, settings: Settings, out: BinaryIO):
        self.settings = settings
        events.configure(settings.protocol)  # --protocol jsonrpc: every event a JSON-RPC notification
        self.started = time.monotonic()
        self.writer = LineWriter(out)
        self.lock = threading.RLock()
        self.pool = ReplicaPool(settings, self._started, self._lines, self._lost)
        self.router = Router(self.pool.replicas)
        self.db = Database(settings.data_dir / DB_FILE if settings.data_dir else None)
        self.ledger = SessionLedger(self.db, settings.ledger_keep, settings.ledger_days)
        self.presets_holder = PresetsHolder(self)
        self.jobs = JobBook(self)
        self.registry = build_registry(self)
        self.local_names = frozenset(self.registry.names())
        self.pending: dict[tuple[int, str], Answer] = {}
        self.methods: list[str] = []
        self.job_methods: frozenset[str] = frozenset()
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._stop_reason = "eof"
        self._cancel_running = settings.on_exit == "cancel"

    def write(self, message: dict[str, Any] | None) -> None:
        if message is not None:
            self.writer.write(message)

    def all_dead(self) -> bool:
        return bool(self.router.replicas) and all(r.dead for r in self.router.replicas)

    # ---- replicas (called from the pool's poller threads) --------------------------------------

    def _started(self, state: ReplicaState, info: dict[str, Any]) -> None:
        with self.lock:
            if state.info:
                state.restarts += 1
            state.info, state.token, state.up = info, info["token"], False
            state.models.clear()
        log.info("replica %d started on node %s (%s, pid %s)", state.id, str(info["node"])[:12], info["device"], info["pid"])

    def _lines(self, state: ReplicaState, token: str, lines: list[bytes]) -> None:
        for raw in lines:
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("replica %d wrote a line that is not JSON: %r", state.id, raw[:200])
                continue
            if not isinstance(doc, dict) or token != state.token:
                continue
            with self.lock:
                if doc.get("event") == "ready":
                    self._up(state, doc)
                elif is_answer(doc):
                    done = self.pending.pop((state.id, str(doc.get("request_id"))), None)
                    if done is not None:
                        done(*answer_of(doc))
                    elif not self.jobs.answered(state, doc):
                        log.debug("replica %d answered %s, which nobody waits for", state.id, doc.get("request_id"))
                elif doc.get("type") == "event":
                    self.jobs.event(state, doc)

    def _up(self, state: ReplicaState, ready: dict[str, Any]) -> None:
        state.up = True
        log.info("replica %d is up", state.id)
        if not self.methods:
            self.methods = list(ready.get("data", {}).get("methods") or [])
            self.ask_raw(state, "system.list_methods", {"include_schemas": False}, self._method_table)
        self.mirror([state])
        self.router.replan()
        self.jobs.pump()

    def _method_table(self, data: Any, err: WorkerError | None) -> None:
        if err is not None or not isinstance(data, dict):
            log.error("a replica could not list its methods: %s", err)
            self.methods = []
            return
        self.job_methods = frozenset(m["name"] for m in data.get("methods", []) if m.get("job"))
        self._ready.set()

    def _lost(self, state: ReplicaState, token: str, reason: str) -> None:
        with self.lock:
            if state.dead and self.all_dead():
                for q in list(self.router.waiting):
                    self.jobs.finish(q.job, None, WorkerLost("every replica is gone (Ray used up its restarts); this job never started"))
            if token != state.token:
                return
            log.warning("replica %d (node %s) lost: %s", state.id, str(state.info.get("node"))[:12], reason)
            state.up = False
            state.token = None
            state.models.clear()
            for key in [k for k in self.pending if k[0] == state.id]:
                self.pending.pop(key)(None, WorkerLost(f"replica {state.id} was lost before it answered: {reason}"))
            self.jobs.lost(state, token, reason)
            self.router.replan()
            self.jobs.pump()

    # ---- asking replicas -------------------------------------------------------------------------

    def _rid(self) -> str:
        return f"sdworker-front:{next(self._ids)}"

    def ask(self, replica: ReplicaState, call: Call, done: Answer) -> None:
        """Forward a host call to one replica under a front id; `done(data, error)` gets its answer."""
        rid = self._rid()
        with self.lock:
            self.pending[(replica.id, rid)] = done
            self.pool.send(replica, child_line(call, rid, call.params))

    def ask_raw(self, replica: ReplicaState, method: str, data: dict[str, Any], done: Answer) -> None:
        rid = self._rid()
        with self.lock:
            self.pending[(replica.id, rid)] = done
            self.pool.send(replica, native_line(method, rid, data))

    def mirror(self, replicas: list[ReplicaState] | None = None, delete_id: str | None = None) -> None:
        """Give replicas the front's presets, so a job's `preset` means the same wherever it runs."""
        text = self.presets_holder.presets.export_jsonl()
        for r in replicas if replicas is not None else self.router.up():
            if delete_id is not None:
                self.ask_raw(r, "config.delete", {"id": delete_id}, lambda d, e: None)
            if text:
                self.ask_raw(r, "config.import", {"jsonl": text, "on_conflict": "replace"}, _log_failure("preset copy"))

    # ---- lines from the host ---------------------------------------------------------------------

    def handle_line(self, line: bytes | Oversize) -> None:
        if isinstance(line, Oversize):
            m = _RID.search(line.head)
            rid: Any = orjson.loads(m.group(1)) if m else None
            err: WorkerError = InvalidRequest(f"line of {line.size} bytes is over the limit; send at most the configured --max-line-bytes")
            self.write(encode_error(Rejection(err, guess_form(line.head), str(rid) if rid is not None else None, rid), err))
            return
        try:
            decoded = decode_line(line, self.settings.max_json_depth)
        except Exception as exc:  # noqa: BLE001  (a decoder bug costs one answer, never the loop)
            err = InternalError(f"could not decode the line: {exc}")
            self.write(encode_error(Rejection(err, guess_form(line[:4096])), err))
            return
        retry = False
        if b'"retry"' in line and not decoded.batch:
            doc = orjson.loads(line)
            retry = isinstance(doc, dict) and doc.get("retry") is True
        batch = _Batch(self, len(decoded.items)) if decoded.batch else None
        for item in decoded.items:
            sink: Sink = batch.add if batch is not None else self.write
            if isinstance(item, Rejection):
                sink(encode_error(item, item.error))
            else:
                self.handle_call(item, sink, retry)

    def handle_call(self, call: Call, sink: Sink, retry: bool = False) -> None:
        m = call.method
        try:
            if m == "$/cancelRequest":
                sink(encode_success(call, {"cancelled": self._cancel_request(call)}))  # None for a notification
            elif m in self.local_names:
                self._local(call, sink)
            elif m in sessions.SESSION_METHODS:
                sessions.route(self, call, sink)
            elif m in self.job_methods:
                self.jobs.submit(call, sink, retry)
            elif m in BROADCAST:
                self._broadcast(call, sink)
            else:
                self._forward_any(call, sink)
        except WorkerError as exc:
            sink(encode_error(call, exc))
        except Exception as exc:  # noqa: BLE001  (one call's bug is one error answer)
            log.exception("front failed on %s", m)
            sink(encode_error(call, InternalError(f"internal error in the cluster front ({type(exc).__name__}): {exc}")))

    def _local(self, call: Call, sink: Sink) -> None:
        spec = self.registry.get(call.method)
        params = sessions.validate(spec, call)
        result = spec.handler(params, call)
        if call.method in PRESET_WRITES:
            with self.lock:
                self.mirror(delete_id=params.id if call.method == "config.delete" else None)
        sink(encode_success(call, result))

    def _targets(self) -> list[ReplicaState]:
        up = self.router.up()
        if not up:
            if self.all_dead():
                raise WorkerLost("every replica is gone (Ray used up its restarts); restart the cluster front")
            raise Busy("no replica is up right now (starting or restarting); retry shortly")
        return up

    def _forward_any(self, call: Call, sink: Sink) -> None:
        with self.lock:
            replica = min(self._targets(), key=lambda r: (len(r.running), sum(1 for k in self.pending if k[0] == r.id), r.id))
        if call.method in VIA_REPLICA:
            self._store_via(replica, call, sink)
            return
        self.ask(replica, call, lambda data, err: sink(encode_error(call, err) if err else encode_success(call, data)))

    def _store_via(self, replica: ReplicaState, call: Call, sink: Sink) -> None:
        """A preset write that may need the models dirs: the replica makes it on its copy of the
        store (populate only plans it there), the front stores the documents and copies them out."""
        dry = call.params.get("dry_run") is True
        populate = call.method == "config.populate"
        ask = Call(call.method, {**call.params, "dry_run": True}, Form.NATIVE, call.request_id, call.raw_id) if populate else call

        def done(data: Any, err: WorkerError | None) -> None:
            if err is None and isinstance(data, dict) and not dry:
                docs = data.get("items") or [] if populate else [data]
                text = "".join(orjson.dumps({k: v for k, v in d.items() if k not in ("origin", "source")}).decode() + "\n" for d in docs)
                try:
                    if text:
                        self.presets_holder.presets.import_jsonl(text, on_conflict="skip" if populate else "replace")
                except WorkerError as exc:
                    err = exc
                with self.lock:
                    self.mirror()
            if populate and isinstance(data, dict):
                data["dry_run"] = dry
            sink(encode_error(call, err) if err else encode_success(call, data))

        self.ask(replica, ask, done)

    def _broadcast(self, call: Call, sink: Sink) -> None:
        def done(parts: list[tuple[ReplicaState, Any, WorkerError | None]]) -> None:
            if call.method in CHANGES:
                with self.lock:
                    for r, _, e in parts:
                        if e is None:
                            track_models(call.method, call.params, r)
            data, err = merge(call.method, parts)
            sink(encode_error(call, err) if err else encode_success(call, data))

        with self.lock:
            targets = self._targets()
            gather = Gather(targets, done)
            for r in targets:
                self.ask(r, call, functools.partial(gather.add, r))

    def _cancel_request(self, call: Call) -> bool:
        """JSON-RPC `$/cancelRequest {"id": …}`: cancel the job of that request, if it is still on."""
        with self.lock:
            target = next((j for j in self.jobs.active.values() if j.call.form is Form.JSONRPC and j.call.raw_id == call.params.get("id")), None)
        if target is None:
            return False
        cancel = Call("inference.cancel_session", {"session_id": target.session.session_id}, Form.NATIVE, self._rid(), None)
        sessions.route(self, cancel, lambda _answer: None)
        return True

    # ---- life --------------------------------------------------------------------------------------

    def request_stop(self, reason: str, cancel_running: bool = False) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
        self._cancel_running = self._cancel_running or cancel_running
        if reason != "eof":
            self.jobs.accepting = False
        self._stop.set()

    def _read(self, stdin: BinaryIO) -> None:
        try:
            for line in read_lines(stdin, self.settings.max_line_bytes):
                try:
                    self.handle_line(line)
                except Exception:  # noqa: BLE001
                    log.exception("unhandled error while handling a line")
                if self._stop.is_set() and self._stop_reason == "method":
                    return
        except Exception:  # noqa: BLE001
            log.exception("input loop failed")
        self.request_stop("eof")

    def _wait_ready(self) -> bool:
        """Until a replica is up (True), or a signal asks to stop first (False)."""
        started = time.monotonic()
        warned = 0
        while not self._ready.wait(0.25):
            if self._stop.is_set():
                return False
            waited = time.monotonic() - started
            if waited >= (warned + 1) * START_WARN_S:
                warned += 1
                log.warning("no replica is up after %.0f s; Ray may lack the resources asked (%g GPU, %g CPU each): %s",
                            waited, self.pool.gpus, self.pool.cpus, self.pool.nodes())
        return True

    def serve(self, stdin: BinaryIO) -> int:
        self.pool.connect()
        stop_signals.route(self.request_stop)  # SIGTERM, SIGINT, SIGHUP (held since start): stop cleanly
        self.pool.start()
        if self._wait_ready():
            jsonrpc = self.settings.protocol == "jsonrpc"  # --protocol jsonrpc: the ready line is a notification too
            ready = ready_event(__version__, PROTOCOL_VERSION, os.getpid(), self.methods, jsonrpc)
            data = ready["params"]["data"] if jsonrpc else ready["data"]
            data["replicas"] = [r.public() for r in self.router.up()]  # more come up later: system.get_info
            self.write(ready)
            self.ledger.start()
            threading.Thread(target=self._read, args=(stdin,), name="stdin-reader", daemon=True).start()
            while not self._stop.wait(0.25):
                pass
        log.info("shutting down (%s)", self._stop_reason)
        self._drain()
        self.pool.stop()
        self.ledger.close()
        log.info("bye")
        return 0

    def _drain(self) -> None:
        """Answer everything owed: EOF lets queued jobs run; SIGTERM/shutdown answers them shutting_down."""
        with self.lock:
            self.jobs.accepting = False
            if self._stop_reason != "eof":
                self.jobs.close_queue()
            if self._cancel_running:
                for job in self.jobs.running():
                    sessions.route(self, Call("inference.cancel_session", {"session_id": (job.parent or job).session.session_id}, Form.NATIVE, self._rid(), None), lambda _a: None)
        while True:
            with self.lock:
                if not self.jobs.active and not self.pending:
                    return
                if self.all_dead():
                    for q in list(self.router.waiting):
                        self.jobs.finish(q.job, None, WorkerLost("every replica is gone; this job never started"))
            time.sleep(0.05)


def _log_failure(what: str) -> Answer:
    def done(data: Any, err: WorkerError | None) -> None:
        if err is not None:
            log.warning("%s failed on a replica: %s", what, err.message)

    return done
