"""system.*: liveness, identity, the method table, shutdown."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import TYPE_CHECKING

from .. import PROTOCOL_VERSION, __version__
from ..dispatch.registry import method
from ..jobs.sessions import iso
from ..protocol.envelopes import Call

if TYPE_CHECKING:
    from ..schemas.base import NoParams
    from ..schemas.system import InfoResult, ListMethodsParams, ListMethodsResult, PingParams, PingResult, ShutdownParams, ShutdownResult
    from ..app import App


class SystemInstructor:
    def __init__(self, app: "App"):
        self.app = app

    @method("system.ping", "system:PingParams", "system:PingResult")
    def ping(self, params: PingParams, call: Call) -> dict:
        """Liveness check; echoes `echo` back."""
        return {"pong": True, "time": iso(time.time()), "echo": params.echo}

    @method("system.get_info", "base:NoParams", "system:InfoResult")
    def get_info(self, params: NoParams, call: Call) -> dict:
        """Version, protocol, settings and runtime state."""
        s = self.app.settings
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "uptime_s": round(time.monotonic() - self.app.started, 3),
            "settings": {
                "models_dirs": [str(p) for p in s.models_dirs],
                "output_dir": str(s.output_dir) if s.output_dir else None,
                "data_dir": str(s.data_dir) if s.data_dir else None,
                "database": self.app.db.location,  # <data_dir>/sdworker.db, or ":memory:" (not kept) without --data-dir
                "device": s.device,
                "dtype": s.dtype,
                "max_queue": s.max_queue,
                "max_line_bytes": s.max_line_bytes,
                "max_batch_size": s.max_batch_size,
                "max_resolution": s.max_resolution,
                "events_per_second": s.events_per_second,
                "on_exit": s.on_exit,
            },
            "runtime": self.app.runtime.info(),
        }

    @method("system.list_methods", "system:ListMethodsParams", "system:ListMethodsResult")
    def list_methods(self, params: ListMethodsParams, call: Call) -> dict:
        """Every method with the JSON Schema of its params and result."""
        out = []
        for spec in self.app.registry.specs():
            d = spec.describe()
            if not params.include_schemas:
                d.pop("params_schema")
                d.pop("result_schema")
            out.append(d)
        return {"methods": out}

    @method("system.shutdown", "system:ShutdownParams", "system:ShutdownResult")
    def shutdown(self, params: ShutdownParams, call: Call) -> dict:
        """Stop taking jobs, let the running one finish (or cancel it), answer what is owed, exit 0."""
        running = [s.session_id for s in self.app.engine.running()]
        queued = self.app.engine.queued_count()
        self.app.request_stop("method", cancel_running=params.cancel_running)
        return {"shutting_down": True, "running": running, "queued": queued}
