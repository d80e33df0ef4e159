"""The path of a request: decoded Call -> method spec -> params model -> the reader or the worker lane.

The reader answers the methods registered `inline` (ping, status, cancel: microseconds); every
other call, a job's planning included, runs on the worker lane (dispatch/lane.py), so the reader
is always back at stdin at once. A status or cancel call that names a job still being planned
goes on the lane behind that plan, so it sees the job queued, as it did when the reader planned.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, Callable

from ..jobs.engine import Job, JobEngine
from ..jobs.executor import classify
from ..jobs.sessions import Session
from ..protocol.envelopes import (
    Call,
    DEFAULT_MAX_DEPTH,
    Decoded,
    Form,
    Rejection,
    decode_line,
    encode_error,
    encode_success,
    guess_form,
    salvage,
)
from ..errors import InvalidRequest, WorkerError
from ..protocol.events import EventEmitter
from ..protocol.framing import LineWriter, Oversize
from .lane import Lane
from .registry import MethodSpec, Registry
from .work import Work

log = logging.getLogger(__name__)

Respond = Callable[[Any, "WorkerError | None"], None]

LEGACY_COMMON = frozenset({"session_id", "model_id", "device_id", "request_id"})


def to_wire(result: Any) -> Any:
    dump = getattr(result, "model_dump", None)  # a pydantic model (duck-typed: pydantic loads lazily)
    if dump is not None and not isinstance(result, dict):
        return dump(mode="json")
    return result


def _success(call: Call, result: Any) -> dict[str, Any] | None:
    """The success answer; a result that cannot be serialized still gets one answer (an error)."""
    try:
        return encode_success(call, to_wire(result))
    except Exception as exc:
        log.exception("could not encode result of %s", call.method)
        return encode_error(call, classify(exc))


def _responder(call: Call, sink: Callable[[dict[str, Any] | None], None]) -> Respond:
    """respond(result, error) for a job or a deferred call: it answers once, whoever calls it."""
    answered = False

    def respond(result: Any, error: WorkerError | None) -> None:
        nonlocal answered
        if answered:
            log.error("second answer for %s suppressed", call.request_id)
            return
        answered = True
        sink(encode_error(call, error) if error is not None else _success(call, result))

    return respond


class _Batch:
    """Collects the answers of one JSON-RPC batch and writes them as one array."""

    def __init__(self, writer: LineWriter, expected: int):
        self._writer = writer
        self._pending = expected
        self._answers: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, answer: dict[str, Any] | None) -> None:
        with self._lock:
            if answer is not None:
                self._answers.append(answer)
            self._pending -= 1
            done = self._pending == 0
        if done and self._answers:
            self._writer.write(self._answers)


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        engine: JobEngine,
        writer: LineWriter,
        events_per_second: float,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
    ):
        self.max_json_depth = max_json_depth
        self.registry = registry
        self.engine = engine
        self.writer = writer
        self.events_per_second = events_per_second
        self.lines = 0
        self.lane = Lane()
        self._planning: Counter[str] = Counter()  # session and request ids of jobs on the lane, not yet queued
        self._planning_lock = threading.Lock()

    def finish_deferred(self) -> None:
        """Block until every call handed to the worker lane so far has been answered."""
        self.lane.drain()

    # ---- entry points ------------------------------------------------------------------------

    def handle_line(self, line: bytes | Oversize) -> None:
        self.lines += 1
        if isinstance(line, Oversize):
            self._reject_oversize(line)
            return
        try:
            decoded = decode_line(line, self.max_json_depth)
        except Exception as exc:  # a decoder bug must cost one answer, never the input loop
            log.exception("could not decode a line")
            self._write(encode_error(Rejection(classify(exc), guess_form(line[:4096])), classify(exc)))
            return
        if not decoded.batch and type(decoded.items[0]) is Call:
            self.handle_call(decoded.items[0], self._write)  # one request (nearly every line)
            return
        self.handle_decoded(decoded)

    def handle_decoded(self, decoded: Decoded) -> None:
        batch = _Batch(self.writer, len(decoded.items)) if decoded.batch else None
        for item in decoded.items:
            sink: Callable[[dict[str, Any] | None], None] = batch.add if batch else self._write
            if isinstance(item, Rejection):
                sink(encode_error(item, item.error))
            else:
                self.handle_call(item, sink)

    def _write(self, message: dict[str, Any] | None) -> None:
        if message is not None:
            self.writer.write(message)

    def _reject_oversize(self, line: Oversize) -> None:
        err = InvalidRequest(f"line of {line.size} bytes is over the limit; send at most the configured --max-line-bytes")
        self._write(encode_error(salvage(line.head, err, head=True), err))

    # ---- one call ------------------------------------------------------------------------------

    def handle_call(self, call: Call, sink: Callable[[dict[str, Any] | None], None]) -> None:
        try:
            spec = self.registry.get(call.method)
            raw = call.params
            if call.form is Form.LEGACY:
                # Legacy hosts send their envelope fields (session_id, model_id, device_id) with every
                # action; a method that has no such field simply does not read them.
                fields = spec.params.model_fields
                raw = {k: v for k, v in raw.items() if k in fields or k not in LEGACY_COMMON}
            params = spec.validate(raw)  # paths relative to the request; encode_error places them
        except WorkerError as exc:
            sink(encode_error(call, exc))
            return
        if spec.inline and not self._names_planned_job(params):
            self._answer_inline(spec, params, call, sink)
            return
        respond = _responder(call, sink)
        keys = self._plan_keys(call, params) if spec.job else ()
        with self._planning_lock:
            self._planning.update(keys)
        self.lane.put(lambda: self._run(spec, params, call, respond, keys))

    def _answer_inline(self, spec: MethodSpec, params: Any, call: Call, sink: Callable[[dict[str, Any] | None], None]) -> None:
        """The control plane's hot path (ping, status, cancel): answered here, on the reader thread."""
        try:
            sink(_success(call, spec.handler(params, call)))
        except WorkerError as exc:
            sink(encode_error(call, exc))
        except Exception as exc:
            log.exception("handler of %s failed", call.method)
            sink(encode_error(call, classify(exc)))

    @staticmethod
    def _plan_keys(call: Call, params: Any) -> tuple[str, ...]:
        """The ids a status or cancel call may name this job by before it is queued."""
        session = getattr(params, "session_id", None) or call.session_id or call.request_id
        return tuple(str(k) for k in {session, call.request_id} if k is not None)

    def _names_planned_job(self, params: Any) -> bool:
        key = getattr(params, "session_id", None)
        if key is None:
            return False
        with self._planning_lock:
            return self._planning[str(key)] > 0

    def _run(self, spec: MethodSpec, params: Any, call: Call, respond: Respond, keys: tuple[str, ...] = ()) -> None:
        """On the worker lane: a method's handler, or a job's plan and its queueing."""
        try:
            if not spec.job:
                respond(spec.handler(params, call), None)
                return
            work: Work = spec.handler(params, call)
            self._submit(call, work, respond)
        except WorkerError as exc:
            respond(None, exc)
        except Exception as exc:
            log.exception("handler of %s failed", call.method)
            respond(None, classify(exc))
        finally:
            if keys:
                with self._planning_lock:
                    self._planning.subtract(keys)
                    for k in keys:
                        if self._planning[k] <= 0:
                            del self._planning[k]

    def _submit(self, call: Call, work: Work, respond: Respond) -> None:
        session_id = call.session_id or call.request_id
        call.session_id = session_id
        session = Session(
            session_id=session_id,
            request_id=call.request_id,
            method=call.method,
            model_id=work.model_id,
            device_id=work.device_id,
            executor=work.executor,
            priority=call.priority,
            request=call.params,
        )
        events = EventEmitter(self.writer.write, call, self.events_per_second)
        job = Job(session=session, run=work.run, respond=respond, events=events, timeout=call.timeout, preview=work.preview)
        self.engine.submit(job)
