"""system.*: liveness, identity, the method table, shutdown."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..dispatch.registry import method
from ..jobs.sessions import iso
from ..protocol.envelopes import Call

if TYPE_CHECKING:
    from ..interfaces.worker import WorkerInterface
    from ..schemas.base import NoParams
    from ..schemas.system import InfoResult, ListMethodsParams, ListMethodsResult, PingParams, PingResult, ShutdownParams, ShutdownResult


class SystemInstructor:
    def __init__(self, worker: "WorkerInterface"):
        self.worker = worker

    @method("system.ping", "system:PingParams", "system:PingResult", inline=True)
    def ping(self, params: PingParams, call: Call) -> dict:
        """Liveness check; echoes `echo` back."""
        return {"pong": True, "time": iso(time.time()), "echo": params.echo}

    @method("system.get_info", "base:NoParams", "system:InfoResult", inline=True)
    def get_info(self, params: NoParams, call: Call) -> dict:
        """Version, protocol, settings and runtime state."""
        return self.worker.info()

    @method("system.list_methods", "system:ListMethodsParams", "system:ListMethodsResult")
    def list_methods(self, params: ListMethodsParams, call: Call) -> dict:
        """Every method with the JSON Schema of its params and result."""
        return self.worker.methods(params.include_schemas)

    @method("system.shutdown", "system:ShutdownParams", "system:ShutdownResult", inline=True)
    def shutdown(self, params: ShutdownParams, call: Call) -> dict:
        """Stop taking jobs, let the running one finish (or cancel it), answer what is owed, exit 0."""
        return self.worker.shutdown(params.cancel_running)
