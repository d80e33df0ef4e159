"""Errors as values: every failure that reaches the host is a WorkerError with a fixed code."""

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


class WorkerError(Exception):
    """A failure the host should see. Subclasses fix the code; the message says what to do."""

    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        details: list[dict[str, Any]] | None = None,
        code: str | None = None,
        data: Any = None,
    ):
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.data = data  # partial results worth keeping (a cancelled job's finished images)
        if code is not None:
            if code not in JSONRPC_CODES:
                raise ValueError(f"unknown error code {code!r}")
            self.code = code

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


def validation_details(exc: Any, prefix: str = "data") -> list[dict[str, str]]:
    """Turn a pydantic ValidationError into [{path, message}] with dotted paths under `prefix`."""
    out: list[dict[str, str]] = []
    for err in exc.errors(include_url=False):
        parts = [prefix, *(str(p) for p in err.get("loc", ()))]
        out.append({"path": ".".join(parts), "message": err.get("msg", "invalid")})
    return out


def from_validation(exc: Any, prefix: str = "data") -> ValidationFailed:
    details = validation_details(exc, prefix)
    first = details[0] if details else {"path": prefix, "message": "invalid"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ValidationFailed(f"{first['path']}: {first['message']}{more}", details)
