"""The replicas as Ray actors: connect, size, start, long-poll, send, notice losses, stop.

One poller thread per replica calls the actor's `poll` in a loop and hands the child's lines to
the front in the order the child wrote them. A replica is lost when a call to it fails (its
process or node died; Ray restarts it), when a poll answers with a new incarnation token (it was
restarted meanwhile), or when its child exited (the pool then has Ray restart the actor). Each
loss is reported once per incarnation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..settings import Settings
from .replica import Replica, child_argv
from .router import ReplicaState

log = logging.getLogger(__name__)

MAX_RESTARTS = 8  # per replica; past that Ray gives it up and the front serves with the others
POLL_WAIT_S = 1.0
STOP_GRACE_S = 30.0

OnLines = Callable[[ReplicaState, str, list[bytes]], None]
OnLost = Callable[[ReplicaState, str, str], None]
OnStart = Callable[[ReplicaState, dict[str, Any]], None]


class PoolError(Exception):
    """A cluster that cannot host the asked replicas; said in one line, exit 2."""


def plan(settings: Settings, resources: dict[str, float]) -> tuple[int, float, float]:
    """(replicas, gpus each, cpus each) from the flags and what the cluster has."""
    gpus_total = float(resources.get("GPU", 0.0))
    gpus = settings.replica_gpus if settings.replica_gpus is not None else (1.0 if gpus_total >= 1 else 0.0)
    cpus = settings.replica_cpus
    if gpus < 0 or cpus < 0:
        raise PoolError("--replica-gpus and --replica-cpus must be 0 or more")
    if gpus > 0 and gpus_total < gpus:
        raise PoolError(f"--replica-gpus {gpus:g}: the Ray cluster has {gpus_total:g} GPU(s); use --replica-gpus 0 for CPU replicas")
    n = settings.replicas if settings.replicas is not None else (max(1, int(gpus_total // gpus)) if gpus > 0 else 1)
    if n < 1:
        raise PoolError("--replicas must be 1 or more")
    return n, gpus, cpus


class ReplicaPool:
    def __init__(self, settings: Settings, on_start: OnStart, on_lines: OnLines, on_lost: OnLost):
        self.settings = settings
        self._on_start, self._on_lines, self._on_lost = on_start, on_lines, on_lost
        self.replicas: list[ReplicaState] = []
        self._actors: dict[int, Any] = {}
        self.closing = False
        self.address: str | None = None
        self.gpus = self.cpus = 0.0

    def connect(self) -> None:
        import ray

        local = self.settings.ray_address == "local"
        extra: dict[str, Any] = {"include_dashboard": False} if local else {}
        try:
            ray.init(
                address=self.settings.ray_address,
                logging_level=logging.WARNING,
                log_to_driver=True,  # the replicas' stderr (the workers' logs) comes out on the front's stderr
                **extra,
            )
        except Exception as exc:  # noqa: BLE001  (Ray raises ConnectionError, ValueError, RuntimeError, ...)
            raise PoolError(f"cannot reach the Ray cluster at {self.settings.ray_address!r}: {exc}") from None
        self.address = ray.get_runtime_context().gcs_address

    def start(self) -> None:
        import ray

        n, self.gpus, self.cpus = plan(self.settings, ray.cluster_resources())
        remote = ray.remote(Replica).options(
            num_gpus=self.gpus,
            num_cpus=self.cpus,
            max_restarts=MAX_RESTARTS,
            max_task_retries=0,
            max_concurrency=8,
            scheduling_strategy="SPREAD",
        )
        argv = child_argv(self.settings, "cuda" if self.gpus > 0 else "cpu")
        for i in range(n):
            state = ReplicaState(id=i)
            self.replicas.append(state)
            self._actors[i] = remote.remote(i, argv)
        for state in self.replicas:
            threading.Thread(target=self._poll_loop, args=(state,), name=f"replica-{state.id}", daemon=True).start()

    def nodes(self) -> list[dict[str, Any]]:
        import ray

        return [{"node": n["NodeID"], "alive": n["Alive"], "address": n["NodeManagerAddress"], "resources": n["Resources"]} for n in ray.nodes()]

    # ---- one replica ---------------------------------------------------------------------------

    def send(self, state: ReplicaState, data: bytes) -> None:
        """Fire and forget: a failed send shows as a failed poll of the same incarnation."""
        self._actors[state.id].send.remote(data)

    def _poll_loop(self, state: ReplicaState) -> None:
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        actor = self._actors[state.id]
        token: str | None = None
        failures = 0
        while True:
            try:
                tok, lines, exit_code = ray.get(actor.poll.remote(POLL_WAIT_S))
            except RayActorError as exc:
                if self.closing:
                    return
                if token is not None:
                    self._on_lost(state, token, f"its process or node died ({type(exc).__name__})")
                    token = None
                failures += 1
                if isinstance(exc, ActorDiedError) and failures > 3 and not state.dead:
                    state.dead = True  # Ray gave up on it (restarts used up)
                    self._on_lost(state, "", "Ray gave up restarting it")
                time.sleep(min(5.0, 0.2 * failures))
                continue
            except Exception:  # noqa: BLE001  (the loop must outlive any one bad call)
                if self.closing:
                    return
                log.exception("polling replica %d failed", state.id)
                time.sleep(1.0)
                continue
            failures = 0
            state.dead = False
            if tok != token:
                if token is not None:
                    self._on_lost(state, token, "it was restarted")
                token = tok
                try:
                    info = ray.get(actor.info.remote())
                except RayActorError:
                    token = None
                    continue
                self._on_start(state, info)
            if lines:
                self._on_lines(state, tok, lines)
            if exit_code is not None:
                if self.closing:
                    return
                self._on_lost(state, tok, f"its worker process exited (code {exit_code})")
                token = None
                ray.kill(actor, no_restart=False)  # Ray starts the replica again (counts against MAX_RESTARTS)

    # ---- shutdown ------------------------------------------------------------------------------

    def stop(self) -> None:
        """EOF to every child (they finish what they owe and exit), then end the actors and Ray."""
        import ray

        self.closing = True
        refs = [actor.stop.remote(STOP_GRACE_S) for actor in self._actors.values()]
        try:
            ray.get(refs, timeout=STOP_GRACE_S + 5)
        except Exception:  # noqa: BLE001  (a dead replica has nothing left to stop)
            pass
        for actor in self._actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            log.exception("ray.shutdown failed")
