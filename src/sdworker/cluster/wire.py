"""The front's side of the pipe to a replica's child: a host Call becomes a child line, a child
answer becomes (data, error) for the host's own encoder (protocol.envelopes).

The child speaks the native form, except for legacy calls: those go on in the legacy form, so the
child treats their flat fields exactly as a single worker would.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import JSONRPC_CODES, InternalError, WorkerError
from ..protocol.envelopes import Call, Form

_NOT_PARAMS = ("retry",)  # read by the front, never by the worker (its params forbid unknown keys)


def strip_front_keys(params: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(params without the front's own keys, whether `retry` was asked)."""
    if not any(k in params for k in _NOT_PARAMS):
        return params, False
    retry = params.get("retry") is True
    return {k: v for k, v in params.items() if k not in _NOT_PARAMS}, retry


def child_line(call: Call, rid: str, params: dict[str, Any], timeout: float | None = None, priority: int | None = None) -> bytes:
    """The line that asks a child for `call`, under the front's own request id `rid`."""
    if call.form is Form.LEGACY and call.action:
        doc: dict[str, Any] = {**params, "action": call.action, "request_id": rid}
        if call.action == "execute_inference":
            doc["inference_type"] = call.method.split(".", 1)[1]
        if call.session_id and "session_id" not in doc:
            doc["session_id"] = call.session_id
    else:
        doc = {"type": call.method, "request_id": rid, "data": params}
    prio = call.priority if priority is None else priority
    if prio:
        doc["priority"] = prio
    if timeout is not None:
        doc["timeout"] = timeout
    return orjson.dumps(doc) + b"\n"


def native_line(method: str, rid: str, data: dict[str, Any] | None = None) -> bytes:
    """A request the front itself makes of a child (list_methods, preset mirroring)."""
    return orjson.dumps({"type": method, "request_id": rid, "data": data or {}}) + b"\n"


def error_of(code: Any, message: Any, details: Any = None, data: Any = None) -> WorkerError:
    """A child's error as the same WorkerError (an unknown code from a newer child: internal_error)."""
    text = str(message or "the replica failed without a message")
    det = details if isinstance(details, list) else []
    # The child answered in the native (or legacy) form: its `data.` paths are placed again for the
    # host's form; any other path was already as sent.
    rooted = not any(isinstance(d, dict) and str(d.get("path", "")).startswith("data") for d in det)
    if isinstance(code, str) and code in JSONRPC_CODES:
        return WorkerError(text, det, code=code, data=data, rooted=rooted)
    return InternalError(text, det, data=data, rooted=rooted)


def answer_of(doc: dict[str, Any]) -> tuple[Any, WorkerError | None]:
    """A child's response line (native or legacy) as (data, None) or (None, error)."""
    if doc.get("type") == "response":
        if doc.get("success"):
            return doc.get("data"), None
        return None, error_of(doc.get("error_code"), doc.get("error"), doc.get("error_details"), doc.get("data"))
    if doc.get("success"):
        return doc.get("results"), None
    return None, error_of(doc.get("error_code"), doc.get("error"), doc.get("error_details"), doc.get("results"))


def is_answer(doc: Any) -> bool:
    return isinstance(doc, dict) and (doc.get("type") == "response" or ("success" in doc and "type" not in doc))


def model_of(params: dict[str, Any], default: str | None = None) -> str | None:
    """The model a job names (flat, `parameters` bag, or the nested Model.Base), for affinity only."""
    for bag in (params, params.get("parameters")):
        if isinstance(bag, dict):
            for key in ("model_id", "model_name"):
                if isinstance(bag.get(key), str) and bag[key]:
                    return bag[key]
    model = params.get("model")
    if isinstance(model, dict) and isinstance(model.get("base"), str):
        return model["base"]
    if isinstance(model, str) and model:
        return model
    return default
