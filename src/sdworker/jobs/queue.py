"""A priority queue of jobs: higher priority first, FIFO within one priority, removable."""

from __future__ import annotations

import heapq
import itertools
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class JobQueue(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: T, priority: int = 0) -> None:
        with self._cond:
            heapq.heappush(self._heap, (-priority, next(self._seq), item))
            self._cond.notify()

    def get(self) -> T | None:
        """Block for the next item; None once the queue is closed and empty."""
        with self._cond:
            while not self._heap and not self._closed:
                self._cond.wait()
            if not self._heap:
                return None
            return heapq.heappop(self._heap)[2]

    def remove(self, item: T) -> bool:
        with self._cond:
            for i, entry in enumerate(self._heap):
                if entry[2] is item:
                    self._heap.pop(i)
                    heapq.heapify(self._heap)
                    return True
            return False

    def drain(self) -> list[T]:
        with self._cond:
            items = [e[2] for e in sorted(self._heap)]
            self._heap.clear()
            return items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def ordered(self) -> list[T]:
        with self._cond:
            return [e[2] for e in sorted(self._heap)]

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)
