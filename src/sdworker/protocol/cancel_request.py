"""`$/cancelRequest` {"id": ...}: the cancellation of vscode-jsonrpc (and LSP), as inference.cancel_session.

`id` is the JSON-RPC id of the request whose job should stop. That job's session is the id itself
unless the request named its own session_id; inference.cancel_session finds a job by its request
id as well. It comes as a notification, so it is never answered; the cancelled job's own response
is the usual `cancelled` error.
"""

from __future__ import annotations

from typing import Any

from ..errors import ValidationFailed

CANCEL_REQUEST = "$/cancelRequest"


def cancel_request_call(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The method and params that $/cancelRequest stands for."""
    rid = params.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int, float)):
        raise ValidationFailed(
            '$/cancelRequest needs params {"id": <the id of the request to cancel>}',
            [{"path": "params.id", "message": "expected the id (string or number) of a request"}],
            rooted=True,
        )
    return "inference.cancel_session", {"session_id": str(rid)}
