"""Unsolicited events to the host, rate-limited per session so they never flood the pipe.

An event goes out in the form of its request (a JSON-RPC request's events are notifications),
except under `--protocol jsonrpc`, where every event is a JSON-RPC notification so a stock client
can read every line. The App sets that once with configure(); one worker process has one App.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .envelopes import Call, encode_event

_all_jsonrpc = False


def configure(protocol: str) -> None:
    """"jsonrpc": every event is a JSON-RPC notification, whatever form its request came in."""
    global _all_jsonrpc
    _all_jsonrpc = protocol == "jsonrpc"


def all_jsonrpc() -> bool:
    return _all_jsonrpc


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
        return self._write(encode_event(self._call, event, data, notification=_all_jsonrpc))
