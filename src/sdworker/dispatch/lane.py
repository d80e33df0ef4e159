"""The worker lane: one thread that runs, in arrival order, every call the reader does not answer itself.

One thread, not a pool: calls that change state (a load, a preset write, a job's queueing) keep
the order the host sent them in, as they had when the reader ran them, and a job planned after a
`config.create` sees that preset. The reader only parses, validates and hands the call over.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Lane:
    def __init__(self, name: str = "worker-lane"):
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None]] | None = None
        self._lock = threading.Lock()

    def put(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._queue is None:  # started on first use: a worker that is only pinged runs no extra thread
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._loop, args=(self._queue,), name=self._name, daemon=True).start()
            self._queue.put(fn)

    def drain(self) -> None:
        """Block until every call put so far has run (shutdown owes each its answer)."""
        with self._lock:
            lane = self._queue
        if lane is None:
            return
        done = threading.Event()
        lane.put(done.set)
        done.wait()

    @staticmethod
    def _loop(lane: "queue.SimpleQueue[Callable[[], None]]") -> None:
        while True:
            fn = lane.get()
            try:
                fn()
            except Exception:  # every call answers its own errors; this is a bug's last line of defence
                log.exception("a call on the worker lane failed")
