"""Unsolicited events to the host, rate-limited per session so they never flood the pipe."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .envelopes import Call, encode_event


class EventEmitter:
    """Events of one request. `progress` is throttled; status transitions always go out."""

    def __init__(self, write: Callable[[object], bool], call: Call, max_per_second: float = 10.0):
        self._write = write
        self._call = call
        self._interval = 1.0 / max_per_second if max_per_second > 0 else 0.0
        self._last = 0.0
        self._lock = threading.Lock()
        self.sent = 0
        self.dropped = 0

    def emit(self, event: str, data: dict[str, Any], throttle: bool = False) -> bool:
        now = time.monotonic()
        with self._lock:
            if throttle:
                if now - self._last < self._interval:
                    self.dropped += 1
                    return False
                self._last = now
            self.sent += 1
        return self._write(encode_event(self._call, event, data))
