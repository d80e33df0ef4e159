"""The three request forms (native, JSON-RPC 2.0, legacy action) in and out.

Decoding turns a line into Calls (or Rejections that still know how to be answered);
encoding turns an outcome back into the form the request came in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequest, ParseError, ValidationFailed, WorkerError
from .cancel_request import CANCEL_REQUEST, cancel_request_call

# Encoding lives in encoding.py; the names stay importable from here, where callers found them.
from .encoding import encode_error, encode_event, encode_success, ready_event
from .form import Form
from .keys import normalize_keys
from .legacy_names import INFERENCE_TYPES, LEGACY_ACTIONS, map_inference_type
from .repeated_keys import message as repeated_message
from .repeated_keys import repeated_keys
from .salvage import id_in_head, lenient_parse, wire_safe

__all__ = [
    "INFERENCE_TYPES",
    "LEGACY_ACTIONS",
    "Call",
    "Decoded",
    "Form",
    "Rejection",
    "decode_line",
    "decode_object",
    "encode_error",
    "encode_event",
    "encode_success",
    "guess_form",
    "map_inference_type",
    "nesting_depth",
    "new_request_id",
    "ready_event",
    "salvage",
]


@dataclass(slots=True)
class Call:
    """One decoded request, whatever form it came in."""

    method: str
    params: dict[str, Any]
    form: Form
    request_id: str  # the id sessions and events use (always a string)
    raw_id: Any = None  # the id exactly as sent (JSON-RPC ids may be numbers)
    notification: bool = False  # JSON-RPC without id: run, but never answer
    priority: int = 0
    timeout: float | None = None
    session_id: str | None = None
    action: str | None = None  # legacy action name, echoed back


@dataclass(slots=True)
class Rejection:
    """A line or batch item that could not become a Call, with enough to answer it in its form."""

    error: WorkerError
    form: Form
    request_id: str | None = None
    raw_id: Any = None
    session_id: str | None = None
    notification: bool = False  # a JSON-RPC notification with bad params: never answered


@dataclass(slots=True)
class Decoded:
    items: list[Call | Rejection] = field(default_factory=list)
    batch: bool = False  # a JSON-RPC batch: answered by one array


def new_request_id() -> str:
    return "req-" + uuid.uuid4().hex[:12]


def guess_form(raw: bytes) -> Form:
    """For lines that are not valid JSON: answer in the form the bytes most look like."""
    if b'"jsonrpc"' in raw:
        return Form.JSONRPC
    if b'"action"' in raw:
        return Form.LEGACY
    return Form.NATIVE


DEFAULT_MAX_DEPTH = 64


def nesting_depth(doc: Any, limit: int) -> int:
    """Depth of nested arrays/objects, counted without recursion and stopping past `limit`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def decode_line(line: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Decoded:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return Decoded([salvage(line, ParseError(f"line is not valid JSON: {exc}"))])
    # Every array or object opens with a bracket byte, so a line with few brackets (nearly every
    # request) cannot nest deeper than the limit and skips the walk.
    if line.count(b"{") + line.count(b"[") > max_depth and nesting_depth(doc, max_depth) > max_depth:
        err = InvalidRequest(f"JSON nested deeper than {max_depth} levels; flatten it or raise --max-json-depth")
        return Decoded([_reject_whole(doc, err)])
    repeated = repeated_keys(line, doc)  # {} unless a key was sent twice in one object
    if isinstance(doc, list):
        if not doc:
            return Decoded([Rejection(InvalidRequest("empty JSON-RPC batch"), Form.JSONRPC)])
        items = [_decode_jsonrpc(item) for item in doc]
        return Decoded([_refuse_repeated(it, repeated.get(i)) for i, it in enumerate(items)] if repeated else items, batch=True)
    item = decode_object(doc)
    return Decoded([_refuse_repeated(item, repeated.get(None)) if repeated else item])


def salvage(raw: bytes, error: WorkerError, head: bool = False) -> Rejection:
    """Refuse a line that cannot be decoded, in its form, with the id of the whole object Python's json
    reads, or (head: an oversize line's first bytes) of an id pattern (protocol/salvage.py); else null."""
    doc = None if head else lenient_parse(raw)
    if isinstance(doc, dict):
        rej = _reject_whole(doc, error)
        rej.raw_id, rej.request_id, rej.session_id = wire_safe(rej.raw_id), wire_safe(rej.request_id), wire_safe(rej.session_id)
        return rej
    form = guess_form(raw)
    rid = id_in_head(raw, form.value) if head else None
    return Rejection(error, form, request_id=None if rid is None else str(rid), raw_id=rid)


def _refuse_repeated(item: Call | Rejection, found: tuple[str, str] | None) -> Call | Rejection:
    """A request holding a key twice becomes a validation_error naming it (a notification stays silent)."""
    if found is None or isinstance(item, Rejection):
        return item
    err = ValidationFailed(f"{found[0]}: {repeated_message(found)}", [{"path": found[0], "message": repeated_message(found)}], rooted=True)
    return Rejection(err, item.form, request_id=item.request_id, raw_id=item.raw_id, session_id=item.session_id, notification=item.notification)


def _reject_whole(doc: Any, err: WorkerError) -> Rejection:
    """Refuse a parsed document as a whole, answered in its form with the id it carries."""
    if not isinstance(doc, dict):
        return Rejection(err, Form.JSONRPC if isinstance(doc, list) else Form.NATIVE)
    if "jsonrpc" in doc:
        rid = doc.get("id")
        return Rejection(err, Form.JSONRPC, raw_id=rid if isinstance(rid, (str, int, float)) and not isinstance(rid, bool) else None)
    form = Form.LEGACY if "action" in doc else Form.NATIVE
    keys = ("request_id", "session_id") if form is Form.LEGACY else _RID_KEYS
    rid = _first(doc, keys)
    request_id = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and rid != "" else None
    sid = doc.get("session_id")
    return Rejection(err, form, request_id=request_id, raw_id=request_id, session_id=sid if isinstance(sid, str) else None)


def decode_object(doc: Any) -> Call | Rejection:
    if not isinstance(doc, dict):
        return Rejection(InvalidRequest(f"a request is a JSON object, got {type(doc).__name__}"), Form.NATIVE)
    if "jsonrpc" in doc:
        return _decode_jsonrpc(doc)
    if "action" in doc:
        return _decode_legacy(doc)
    return _decode_native(doc)


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidRequest(f"timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def _priority(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"priority must be an integer, got {value!r}")
    return value


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailed(
            f"{where} must be a JSON object", [{"path": where, "message": "expected an object"}], rooted=True
        )
    return normalize_keys(value, where)


def _session_of(params: dict[str, Any]) -> str | None:
    sid = params.get("session_id")
    return str(sid) if isinstance(sid, (str, int)) and not isinstance(sid, bool) else None


def _first(doc: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in doc:
            return doc[key]
    return None


_RID_KEYS = ("request_id", "requestId", "RequestId")
_TYPE_KEYS = ("type", "message_type", "messageType", "MessageType", "Type")
_DATA_KEYS = ("data", "Data")


def _decode_native(doc: dict[str, Any]) -> Call | Rejection:
    # The control plane's hot path (pings, status polls): the usual keys are looked up first.
    rid = doc["request_id"] if "request_id" in doc else _first(doc, _RID_KEYS)
    if type(rid) is str and rid:
        request_id = rid
    elif isinstance(rid, int) and not isinstance(rid, bool):
        request_id = str(rid)
    else:
        request_id = new_request_id()
    method = doc["type"] if "type" in doc else _first(doc, _TYPE_KEYS)
    try:
        if not isinstance(method, str) or not method:
            raise InvalidRequest("a native request needs a string 'type' (the method name)")
        data = doc["data"] if "data" in doc else _first(doc, _DATA_KEYS)
        params = {} if data is None or data == {} else _params(data, "data")
        priority = doc.get("priority")
        timeout = doc.get("timeout")
        return Call(
            method,
            params,
            Form.NATIVE,
            request_id,
            request_id,
            False,
            0 if priority is None else _priority(priority),
            None if timeout is None else _timeout(timeout),
            _session_of(params) if params else None,
        )
    except WorkerError as exc:
        return Rejection(exc, Form.NATIVE, request_id=request_id, raw_id=request_id)


def _decode_jsonrpc(doc: Any) -> Call | Rejection:
    if not isinstance(doc, dict):
        return Rejection(InvalidRequest("a JSON-RPC request is an object"), Form.JSONRPC)
    has_id = "id" in doc
    raw_id = doc.get("id")
    try:
        if doc.get("jsonrpc") != "2.0":
            raise InvalidRequest('"jsonrpc" must be exactly "2.0"')
        if has_id and (isinstance(raw_id, (bool, dict, list)) or (raw_id is not None and not isinstance(raw_id, (str, int, float)))):
            raw_id = None
            raise InvalidRequest("id must be a string, a number or null")
        method = doc.get("method")
        if not isinstance(method, str) or not method:
            raise InvalidRequest('"method" must be a non-empty string')
        if "params" in doc and not isinstance(doc["params"], (dict, type(None))):
            raise ValidationFailed(
                "params must be an object of named parameters", [{"path": "params", "message": "expected an object"}], rooted=True
            )
        params = _params(doc.get("params"), "params")
        if method == CANCEL_REQUEST:  # vscode-jsonrpc's cancellation: cancel the job of request params.id
            method, params = cancel_request_call(params)
        request_id = str(raw_id) if has_id and raw_id is not None else new_request_id()
        return Call(
            method=method,
            params=params,
            form=Form.JSONRPC,
            request_id=request_id,
            raw_id=raw_id,
            notification=not has_id,
            priority=_priority(doc.get("priority")),
            timeout=_timeout(doc.get("timeout")),
            session_id=_session_of(params),
        )
    except WorkerError as exc:
        # An invalid request is answered even without an id (id null), as JSON-RPC asks; a
        # well-formed notification whose params are wrong is still a notification: no answer.
        silent = not has_id and isinstance(exc, ValidationFailed)
        return Rejection(exc, Form.JSONRPC, raw_id=raw_id, notification=silent)


_LEGACY_ENVELOPE = {"action", "inference_type", "priority", "timeout"}


def _decode_legacy(doc: dict[str, Any]) -> Call | Rejection:
    try:
        flat = normalize_keys(doc)
    except WorkerError as exc:  # two spellings of one key: answered with the ids as sent
        return _reject_whole(doc, exc)
    sid = flat.get("session_id")
    session_id = str(sid) if isinstance(sid, (str, int)) and not isinstance(sid, bool) and sid != "" else None
    rid = flat.get("request_id")
    request_id = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and rid != "" else (session_id or new_request_id())
    action = flat.get("action")
    try:
        if not isinstance(action, str):
            raise InvalidRequest("'action' must be a string")
        if action == "execute_inference":
            method = map_inference_type(flat.get("inference_type", "text2img"))
        elif action in LEGACY_ACTIONS:
            method = LEGACY_ACTIONS[action]
        else:
            # Let the dispatcher answer unknown_method with close matches among actions too.
            method = action
        params = {k: v for k, v in flat.items() if k not in _LEGACY_ENVELOPE and k != "request_id"}
        if action in ("get_session_details",):
            for key in ("include_progress", "include_metrics", "include_resources", "include_logs"):
                params.setdefault(key, True)
        if action == "validate_request" and "inference_type" in flat:
            params["inference_type"] = flat["inference_type"]
        if session_id is None and action == "execute_inference":
            session_id = request_id
            params["session_id"] = session_id
        return Call(
            method=method,
            params=params,
            form=Form.LEGACY,
            request_id=request_id,
            raw_id=request_id,
            priority=_priority(flat.get("priority")),
            timeout=_timeout(flat.get("timeout")),
            session_id=session_id,
            action=action,
        )
    except WorkerError as exc:
        return Rejection(exc, Form.LEGACY, request_id=request_id, raw_id=request_id, session_id=session_id)
