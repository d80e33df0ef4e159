"""The worker itself: identity, settings, its state, capabilities and devices, the method table, shutdown.

What the system.* methods and the worker-wide inference.* ones (status, capabilities) read.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import PROTOCOL_VERSION, __version__
from ..errors import ValidationFailed

if TYPE_CHECKING:
    from ..dispatch.registry import Registry
    from ..jobs.engine import JobEngine
    from ..jobs.sessions import Session
    from ..managers.pipelines import PipelineManager
    from ..managers.runtime import Runtime
    from ..settings import Settings


def _supported_base_models() -> tuple[str, ...]:
    from ..families import supported_base_models  # the family modules load after the ready event

    return supported_base_models()


class WorkerInterface:
    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        engine: JobEngine,
        pipelines: PipelineManager,
        registry: Registry,
        database: Callable[[], str],
        stop: Callable[[str, bool], None],
    ):
        self.settings = settings
        self.runtime = runtime
        self.engine = engine
        self.pipelines = pipelines
        self.registry = registry
        self._database = database
        self._stop = stop
        self.started = time.monotonic()

    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started, 3)

    # ---- identity, methods, stop -------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "uptime_s": self.uptime_s(),
            "settings": s.shown(self._database()),
            "runtime": self.runtime.info(),
        }

    def methods(self, include_schemas: bool) -> dict[str, Any]:
        out = []
        for spec in self.registry.specs():
            d = spec.describe()
            if not include_schemas:
                d.pop("params_schema")
                d.pop("result_schema")
            out.append(d)
        return {"methods": out}

    def shutdown(self, cancel_running: bool) -> dict[str, Any]:
        running = [s.session_id for s in self.engine.running()]
        queued = self.engine.queued_count()
        self._stop("method", cancel_running)
        return {"shutting_down": True, "running": running, "queued": queued}

    def status(self, summary: Callable[[Session], dict[str, Any]]) -> dict[str, Any]:
        running = self.engine.running()
        return {
            "status": "busy" if running else ("starting" if not self.runtime.ready else "idle"),
            "accepting_jobs": self.engine.accepting,
            "queue_length": self.engine.queued_count(),
            "running": [summary(s) for s in running],
            "loaded_models": [lp.ref.model_id for lp in self.pipelines.loaded()],
            "device": self.runtime.device,
            "uptime_s": self.uptime_s(),
        }

    # ---- devices and capabilities ------------------------------------------------------------------

    def device_name(self, key: str) -> str:
        """What the host sees for a device key ("default" or a device id)."""
        return self.runtime.device_name(key)

    def check_device(self, device_id: str | None) -> str:
        return self.runtime.check_device(device_id)

    @staticmethod
    def supported_types() -> list[str]:
        from ..managers.modes import MODES

        return [*MODES, "text2video", "img2video"]

    @staticmethod
    def schedulers() -> list[str]:
        from ..managers import schedulers

        return schedulers.accepted_names()

    def limits(self) -> dict[str, Any]:
        s = self.settings
        return {
            "max_concurrent": 1,
            "max_batch_size": s.max_batch_size,
            "max_resolution": {"width": s.max_resolution, "height": s.max_resolution},
        }

    def capabilities(self) -> dict[str, Any]:
        return {
            "supported_types": self.supported_types(),
            **self.limits(),
            "devices": self.runtime.devices(),
            "schedulers": self.schedulers(),
            "base_models": list(_supported_base_models()),
        }

    def device(self, device_id: str | None) -> dict[str, Any]:
        self.runtime.wait()
        wanted = self.runtime.device_name(self.runtime.check_device(device_id))
        for d in self.runtime.devices():
            if d["device_id"] == wanted:
                return d
        raise ValidationFailed(f"device {device_id!r} is not available", [{"path": "device_id", "message": "unknown device"}])

    def pipelines_info(self, model_id: str | None) -> dict[str, Any]:
        """Loaded pipelines: class, components, scheduler, device, dtype, load time."""
        out = []
        for lp in self.pipelines.loaded():
            if model_id and lp.ref.model_id != model_id:
                continue
            components = {k: type(v).__name__ for k, v in lp.pipe.components.items() if v is not None}
            out.append(
                {
                    "model_id": lp.ref.model_id,
                    "base_model": lp.ref.base_model,
                    "pipeline_class": type(lp.pipe).__name__,
                    "modes": sorted(lp.modes),
                    "scheduler": type(lp.pipe.scheduler).__name__,
                    "components": components,
                    "device": lp.device,
                    "dtype": lp.dtype,
                    "load_ms": lp.load_ms,
                    "runs": lp.runs,
                }
            )
        return {"pipelines": out, "count": len(out)}
