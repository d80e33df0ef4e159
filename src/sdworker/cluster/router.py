"""Which replica runs which job, and when: model affinity, least load, priority across the cluster.

Pure bookkeeping (no Ray, no I/O), guarded by the front's lock. The front holds one queue for
the whole cluster and gives a replica one job at a time, so no job waits behind another on a
replica while a higher-priority one waits at the front.

- On arrival a job is given a preferred replica: one that holds its model (the least loaded of
  them), unless that one is SPILL jobs busier than the least loaded replica; without a holder,
  the least loaded replica (ties: fewer models held, then lower id).
- When replicas are free, each first takes the oldest job of the top priority that prefers it;
  then a free replica takes the oldest job of the top priority whatever it prefers (it loads that
  model): a replica never idles while a job waits, and no job starts before one of higher priority.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

SPILL = 2  # a holder this many jobs busier than the least loaded replica loses the job to it


@dataclass
class ReplicaState:
    id: int
    up: bool = False  # its child has sent ready and it takes jobs
    dead: bool = False  # Ray gave up on it (restarts used up)
    token: str | None = None  # the incarnation the front talks to
    info: dict[str, Any] = field(default_factory=dict)  # id, node, device, pid, child_pid
    models: set[str] = field(default_factory=set)  # models it holds (from the jobs it ran and loads)
    running: list[Any] = field(default_factory=list)  # jobs given to it and not answered (at most one)
    served: int = 0
    restarts: int = 0

    @property
    def free(self) -> bool:
        return self.up and not self.running

    def public(self) -> dict[str, Any]:
        """The `replica` object of results and session rows."""
        return {"id": self.id, "node": self.info.get("node"), "device": self.info.get("device")}


@dataclass(eq=False)
class Queued:
    """A job waiting at the front."""

    job: Any
    model_id: str | None
    priority: int
    seq: int
    preferred: int | None = None
    avoid: int | None = None  # a retried job avoids the replica it was lost on, while another is up


class Router:
    def __init__(self, replicas: list[ReplicaState]):
        self.replicas = replicas
        self.waiting: list[Queued] = []
        self._seq = itertools.count()

    def up(self) -> list[ReplicaState]:
        return [r for r in self.replicas if r.up]

    def load(self, r: ReplicaState) -> int:
        return len(r.running) + sum(1 for q in self.waiting if q.preferred == r.id)

    def prefer(self, model_id: str | None, avoid: int | None = None) -> int | None:
        """The replica a new job should go to (see the module docstring)."""
        up = [r for r in self.up() if r.id != avoid] or self.up()
        if not up:
            return None
        least = min(up, key=lambda r: (self.load(r), len(r.models), r.id))
        holders = [r for r in up if model_id is not None and model_id in r.models]
        if holders:
            best = min(holders, key=lambda r: (self.load(r), r.id))
            if self.load(best) - self.load(least) < SPILL:
                return best.id
        return least.id

    def add(self, job: Any, model_id: str | None, priority: int, avoid: int | None = None, first: bool = False) -> Queued:
        """Queue a job; `first`: ahead of its priority level (a retried job keeps its turn)."""
        q = Queued(job, model_id, priority, -next(self._seq) if first else next(self._seq), avoid=avoid)
        q.preferred = self.prefer(model_id, avoid)
        self.waiting.append(q)
        return q

    def remove(self, job: Any) -> bool:
        for q in self.waiting:
            if q.job is job:
                self.waiting.remove(q)
                return True
        return False

    def ordered(self) -> list[Queued]:
        return sorted(self.waiting, key=lambda q: (-q.priority, q.seq))

    def position(self, job: Any) -> int | None:
        for i, q in enumerate(self.ordered()):
            if q.job is job:
                return i + 1
        return None

    def _eligible(self, q: Queued, r: ReplicaState) -> bool:
        return q.avoid != r.id or len(self.up()) == 1

    def assign(self) -> list[tuple[Queued, ReplicaState]]:
        """Pair waiting jobs with free replicas; the caller marks each replica running and sends."""
        out: list[tuple[Queued, ReplicaState]] = []
        for own_only in (True, False):
            progress = True
            while progress:
                progress = False
                for r in self.replicas:
                    if not r.free or any(rr is r for _, rr in out):
                        continue
                    q = self._pick(r, own_only)
                    if q is not None:
                        self.waiting.remove(q)
                        out.append((q, r))
                        progress = True
        return out

    def _pick(self, r: ReplicaState, own_only: bool) -> Queued | None:
        eligible = [q for q in self.ordered() if self._eligible(q, r)]
        if not eligible:
            return None
        top = eligible[0].priority
        level = [q for q in eligible if q.priority == top]
        for q in level:
            if q.preferred == r.id or (q.model_id is not None and q.model_id in r.models):
                return q
        return None if own_only else level[0]

    def replan(self) -> None:
        """Preferences again, after a replica came up or went down."""
        for q in self.ordered():
            q.preferred = None
        for q in self.ordered():
            q.preferred = self.prefer(q.model_id, q.avoid)
