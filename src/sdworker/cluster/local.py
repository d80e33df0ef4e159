"""Methods the cluster front answers itself: liveness, identity, shutdown, the cluster-wide session
list and status, and the presets (the front holds the one preset store; replicas get a copy).

They are registered and validated exactly as the worker's (dispatch.registry, the same schemas).
config.create, update, populate and resolve may need the models dirs (a model's base_model), so
a replica does them on its copy of the store and the front stores what it made (front.py); every
other config method is the worker's own ConfigInstructor over the front's store.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Any

from .. import PROTOCOL_VERSION, __version__
from ..dispatch.registry import Registry, method
from ..instructors.config import ConfigInstructor
from ..interfaces.presets import PresetInterface
from ..jobs.sessions import iso
from ..lazy import built_once
from ..protocol.envelopes import Call
from .sessions import summary

if TYPE_CHECKING:
    from ..store.presets import PresetStore
    from .front import Front

PRESET_WRITES = frozenset({"config.delete", "config.import"})  # made here, then copied to the replicas
VIA_REPLICA = frozenset({"config.create", "config.update", "config.populate"})  # made by a replica, then stored here


class FrontConfig(ConfigInstructor):
    """The worker's config.* handlers over the front's store, less those a replica makes (see above)."""

    def create(self, *args: Any) -> Any:  # untagged, so not registered here
        raise NotImplementedError

    def update(self, *args: Any) -> Any:
        raise NotImplementedError

    def populate(self, *args: Any) -> Any:
        raise NotImplementedError

    def resolve(self, *args: Any) -> Any:
        raise NotImplementedError


class FrontInstructor:
    def __init__(self, front: Front):
        self.front = front

    @method("system.ping", "system:PingParams", "system:PingResult")
    def ping(self, params: Any, call: Call) -> dict[str, Any]:
        """Liveness check of the front; echoes `echo` back."""
        return {"pong": True, "time": iso(time.time()), "echo": params.echo}

    @method("system.get_info", "base:NoParams", "system:InfoResult")
    def get_info(self, params: Any, call: Call) -> dict[str, Any]:
        """Version, settings, the Ray cluster and every replica (node, device, state)."""
        f = self.front
        s = f.settings
        with f.lock:
            replicas = [
                {**r.public(), "up": r.up, "dead": r.dead, "pid": r.info.get("pid"), "child_pid": r.info.get("child_pid"),
                 "restarts": r.restarts, "served": r.served, "running": [j.session.session_id for j in r.running], "models": sorted(r.models)}
                for r in f.router.replicas
            ]
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "uptime_s": round(time.monotonic() - f.started, 3),
            "settings": {**s.shown(f.db.location), "ray_address": s.ray_address},
            "runtime": {"mode": "cluster", "ready": True},
            "cluster": {"address": f.pool.address, "replica_gpus": f.pool.gpus, "replica_cpus": f.pool.cpus, "nodes": f.pool.nodes()},
            "replicas": replicas,
        }

    @method("system.shutdown", "system:ShutdownParams", "system:ShutdownResult")
    def shutdown(self, params: Any, call: Call) -> dict[str, Any]:
        """Stop taking jobs, let running ones finish (or cancel them), answer what is owed, stop the replicas."""
        f = self.front
        with f.lock:
            running = [j.session.session_id for j in f.jobs.running()]
            queued = len(f.router.waiting)
        f.request_stop("method", cancel_running=params.cancel_running)
        return {"shutting_down": True, "running": running, "queued": queued}

    @method("inference.get_active_sessions", "sessions:ActiveSessionsParams", "sessions:ActiveSessionsResult")
    def get_active_sessions(self, params: Any, call: Call) -> dict[str, Any]:
        """Queued and running sessions of every replica, each with its replica (node, device)."""
        f = self.front
        with f.lock:
            rows = [summary(f, job) for job in f.jobs.active.values()]
        if params.device_id is not None:
            rows = [r for r in rows if r["device_id"] == params.device_id or (r["replica"] or {}).get("device") == params.device_id]
        return {"sessions": rows, "count": len(rows)}

    @method("inference.get_status", "base:NoParams", "sessions:StatusResult")
    def get_status(self, params: Any, call: Call) -> dict[str, Any]:
        """The cluster's state: busy or idle, the front's queue, what runs where, the models each replica holds."""
        f = self.front
        with f.lock:
            running = [summary(f, j.parent or j) for j in f.jobs.running()]
            return {
                "status": "busy" if running else "idle",
                "accepting_jobs": f.jobs.accepting,
                "queue_length": len(f.router.waiting),
                "running": running,
                "loaded_models": sorted({m for r in f.router.replicas for m in r.models}),
                "replicas": [{**r.public(), "up": r.up, "models": sorted(r.models)} for r in f.router.replicas],
                "uptime_s": round(time.monotonic() - f.started, 3),
            }


class PresetsHolder:
    """The front's preset store (opened on first use)."""

    def __init__(self, front: Front):
        self.front = front
        self.settings = front.settings

    @built_once
    def presets(self) -> PresetStore:
        from ..store.presets import PresetStore

        return PresetStore(self.front.db, None)


def build_registry(front: Front) -> Registry:
    registry = Registry()
    registry.add(FrontInstructor(front))
    holder = PresetsHolder(front)
    registry.add(FrontConfig(PresetInterface(lambda: holder.presets, None, front.settings)))
    return registry
