"""Errors as values: every failure that reaches the host is a WorkerError with a fixed code.

Field paths in `details` are relative to the request's params (`model_id`, `loras[0].path`): the
envelope layer puts them under `data.` or `params.` for the form it answers (`placed`). Errors
whose paths are already as they go on the wire (rooted: about the line itself, such as
parse_error, invalid_request, unknown_method and what the decoder refuses; `method`, `params`)
are sent as they are.
"""

from __future__ import annotations

from typing import Any

# error_code -> JSON-RPC code. Standard codes where JSON-RPC has one, -32000.. for the worker's own.
JSONRPC_CODES: dict[str, int] = {
    "parse_error": -32700,
    "invalid_request": -32600,
    "unknown_method": -32601,
    "validation_error": -32602,
    "internal_error": -32603,
    "model_not_found": -32001,
    "model_load_failed": -32002,
    "out_of_memory": -32003,
    "cancelled": -32004,
    "timeout": -32005,
    "busy": -32006,
    "unsafe_path": -32007,
    "unsupported": -32008,
    "shutting_down": -32009,
    "worker_lost": -32010,
}

ERROR_CODES: tuple[str, ...] = tuple(JSONRPC_CODES)

# Codes whose details name parts of the line, not fields of the request.
ROOTED_CODES = frozenset({"parse_error", "invalid_request", "unknown_method"})


class WorkerError(Exception):
    """A failure the host should see. Subclasses fix the code; the message says what to do."""

    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        details: list[dict[str, Any]] | None = None,
        code: str | None = None,
        data: Any = None,
        rooted: bool | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.data = data  # partial results worth keeping (a cancelled job's finished images)
        self._rooted = rooted
        if code is not None:
            if code not in JSONRPC_CODES:
                raise ValueError(f"unknown error code {code!r}")
            self.code = code

    @property
    def rooted(self) -> bool:
        """True when the paths are already as they go on the wire (parts of the line, not request fields)."""
        return self.code in ROOTED_CODES if self._rooted is None else self._rooted

    @rooted.setter
    def rooted(self, value: bool) -> None:
        self._rooted = value

    @property
    def jsonrpc_code(self) -> int:
        return JSONRPC_CODES[self.code]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message})"


class ParseError(WorkerError):
    code = "parse_error"


class InvalidRequest(WorkerError):
    code = "invalid_request"


class UnknownMethod(WorkerError):
    code = "unknown_method"


class ValidationFailed(WorkerError):
    code = "validation_error"


class ModelNotFound(WorkerError):
    code = "model_not_found"


class ModelLoadFailed(WorkerError):
    code = "model_load_failed"


class OutOfMemory(WorkerError):
    code = "out_of_memory"


def is_oom(exc: BaseException) -> bool:
    """The one test for out of memory: torch's OutOfMemoryError by name (no torch import here), or
    an error whose text says so (CPU allocators, MPS, other backends)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class Cancelled(WorkerError):
    code = "cancelled"


class TimedOut(WorkerError):
    code = "timeout"


class Busy(WorkerError):
    code = "busy"


class UnsafePath(WorkerError):
    code = "unsafe_path"


class Unsupported(WorkerError):
    code = "unsupported"


class ShuttingDown(WorkerError):
    code = "shutting_down"


class WorkerLost(WorkerError):
    """Cluster mode: the replica (or its node) running the job died before answering."""

    code = "worker_lost"


class InternalError(WorkerError):
    code = "internal_error"


def validation_details(exc: Any, prefix: str = "") -> list[dict[str, str]]:
    """Turn a pydantic ValidationError into [{path, message}]: dotted paths relative to the request
    (or under `prefix`, for a part of it)."""
    out: list[dict[str, str]] = []
    for err in exc.errors(include_url=False):
        parts = [*([prefix] if prefix else []), *(str(p) for p in err.get("loc", ()))]
        out.append({"path": ".".join(parts), "message": err.get("msg", "invalid")})
    return out


def from_validation(exc: Any, prefix: str = "") -> ValidationFailed:
    details = validation_details(exc, prefix)
    first = details[0] if details else {"path": prefix, "message": "invalid"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ValidationFailed(f"{first['path']}: {first['message']}{more}", details)


# ---- placing paths under the form's root --------------------------------------------------------


def _relative(path: str) -> str:
    """A request-relative path; `data.`-rooted ones (the native form's spelling) lose the root."""
    if path == "data":
        return ""
    if path.startswith(("data.", "data[")):
        return path[5:] if path[4] == "." else path[4:]
    return path


def under(root: str, path: str) -> str:
    """`model_id` under `params` -> `params.model_id`; `[0]` -> `params[0]`; `` -> `params`."""
    if not path:
        return root
    return root + path if path.startswith("[") else f"{root}.{path}"


def placed(error: WorkerError, root: str) -> tuple[str, list[dict[str, Any]]]:
    """The error's message and details with request paths under `root` (`data` or `params`).

    A message that starts with its first field path ("width: must be ...") names it the same way.
    Paths still spelled `data.…` are read as request-relative, so both spellings answer alike.
    """
    if error.rooted or not error.details:
        message = error.message
        if not error.rooted and message.startswith(("data.", "data:", "data[")):
            message = under(root, _relative(message.split(":", 1)[0])) + message[len(message.split(":", 1)[0]):]
        return message, error.details
    details = [{**d, "path": under(root, _relative(str(d.get("path", ""))))} if "path" in d else dict(d) for d in error.details]
    message = error.message
    head = message.split(":", 1)[0] if ":" in message else None
    first = _relative(str(error.details[0].get("path", "")))
    if head is not None and (head == "data" or head.startswith(("data.", "data["))):
        message = under(root, _relative(head)) + message[len(head):]
    elif head is not None and head == first:
        message = under(root, first) + message[len(head):]
    return message, details
