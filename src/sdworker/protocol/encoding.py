"""Encoding: an outcome back into the form its request came in (decoding is envelopes.py).

Error field paths are relative to the request until here; this is the one place that puts them
under `data.` (native and legacy answers) or `params.` (JSON-RPC), as errors.placed does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import WorkerError, placed
from .form import Form

if TYPE_CHECKING:
    from .envelopes import Call, Rejection


_SESSION_ACTIONS = frozenset(
    {"get_session_status", "get_session_details", "get_comprehensive_status", "cancel_session",
     "get_session_performance", "get_session_resources"}
)

def encode_success(call: Call, data: Any) -> dict[str, Any] | None:
    if call.form is Form.JSONRPC:
        return None if call.notification else {"jsonrpc": "2.0", "id": call.raw_id, "result": data}
    if call.form is Form.LEGACY:
        # For session queries the top-level status is the session's, which is what a legacy host reads.
        status = data.get("status") if isinstance(data, dict) and call.action in _SESSION_ACTIONS else None
        return {
            "success": True,
            "request_id": call.request_id,
            "session_id": call.session_id or call.request_id,
            "status": status or "completed",
            "results": data,
        }
    return {"type": "response", "request_id": call.request_id, "success": True, "data": data}


def encode_error(target: Call | Rejection, error: WorkerError) -> dict[str, Any] | None:
    """The failure answer, in the request's form; field paths go under `params.` (JSON-RPC) or `data.`."""
    form = target.form
    partial = getattr(error, "data", None)
    if form is Form.JSONRPC:
        if target.notification:
            return None
        message, details = placed(error, "params")
        data: dict[str, Any] = {"error_code": error.code, "error_details": details}
        if partial is not None:
            data["data"] = partial
        return {
            "jsonrpc": "2.0",
            "id": target.raw_id,
            "error": {"code": error.jsonrpc_code, "message": message, "data": data},
        }
    message, details = placed(error, "data")
    if form is Form.LEGACY:
        out: dict[str, Any] = {
            "success": False,
            "request_id": target.request_id,
            "error": message,
            "error_code": error.code,
        }
        if target.session_id:
            out["session_id"] = target.session_id
        if error.code in ("cancelled", "timeout"):
            out["status"] = "cancelled" if error.code == "cancelled" else "timed_out"
        if details:
            out["error_details"] = details
        if partial is not None:
            out["results"] = partial
        return out
    out = {
        "type": "response",
        "request_id": target.request_id,
        "success": False,
        "error": message,
        "error_code": error.code,
        "error_details": details,
    }
    if partial is not None:
        out["data"] = partial
    return out


def encode_event(call: Call, event: str, data: dict[str, Any], notification: bool = False) -> dict[str, Any]:
    body = {"event": event, "request_id": call.request_id, "session_id": call.session_id or call.request_id, "data": data}
    if notification or call.form is Form.JSONRPC:  # notification: --protocol jsonrpc, whatever the request's form
        return {"jsonrpc": "2.0", "method": f"event.{event}", "params": body}
    return {"type": "event", **body}


def ready_event(version: str, protocol: int, pid: int, methods: list[str], jsonrpc: bool = False) -> dict[str, Any]:
    data = {"version": version, "protocol": protocol, "pid": pid, "methods": methods}
    if jsonrpc:  # --protocol jsonrpc: a notification, so a stock client can read the first line too
        return {"jsonrpc": "2.0", "method": "event.ready", "params": {"event": "ready", "data": data}}
    return {"type": "event", "event": "ready", "data": data}
