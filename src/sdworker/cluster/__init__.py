"""Cluster mode: `sdworker --ray-address ADDR` serves the worker's protocol and runs the jobs on
Ray actors ("replicas"), each running one worker process on one device.

front.py    the protocol loop and where each call goes
jobs.py     jobs at the front: sessions, ledger, dispatch, answers, losses and retries
router.py   which replica runs which job (affinity, least load, priority)
spread.py   batch_process split over replicas and merged back
sessions.py session control routed to the owning replica
aggregate.py  methods every replica answers, merged
local.py    methods the front answers itself (ping, info, shutdown, session lists, presets)
pool.py     the Ray side: connect, start, poll, notice losses, stop
replica.py  the Ray actor: a `python -m sdworker` child and a pipe to it
wire.py     host call <-> child line
"""

from __future__ import annotations

import sys
from typing import BinaryIO

from ..settings import Settings

MISSING_RAY = "sdworker: --ray-address needs Ray: install the cluster extra (pip install 'sdworker[cluster]')"


def run(settings: Settings, out: BinaryIO, stdin: BinaryIO | None = None) -> int:
    """Serve until EOF, SIGTERM, Ctrl-C or system.shutdown; 2 when Ray is missing or cannot host the replicas."""
    try:
        import ray
    except ImportError:
        print(MISSING_RAY, file=sys.stderr)
        return 2
    from .front import Front
    from .pool import PoolError

    front = Front(settings, out)
    try:
        code = front.serve(stdin or sys.stdin.buffer)
    except PoolError as exc:
        print(f"sdworker: {exc}", file=sys.stderr)
        ray.shutdown()  # a private cluster (`local`) must not outlive the front
        return 2
    try:
        out.flush()
    except OSError:
        pass
    return code
