"""SIGTERM, SIGINT and SIGHUP all mean "stop cleanly": take no new jobs, answer what is owed, exit 0.

A host's Ctrl-C reaches every process of its group, the worker included, and a closed terminal
sends SIGHUP: neither may kill the worker mid-job (Python's default for SIGINT raises
KeyboardInterrupt wherever the main thread happens to be). `hold()` runs first thing and only
records a signal; `route()` hands the recorded ones, and every later one, to the app.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

#: signal -> the stop reason the app logs
STOP_SIGNALS: dict[int, str] = {
    int(getattr(signal, name)): name.lower() for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
}

_held: list[str] = []
_target: Callable[[str], None] | None = None


def _on_signal(signum: int, _frame: object) -> None:
    reason = STOP_SIGNALS.get(signum, f"signal {signum}")
    if _target is None:
        _held.append(reason)
    else:
        _target(reason)


_ignored: set[int] | None = None  # ignored when the process started (nohup, `cmd &`): left ignored


def hold() -> bool:
    """Install the handlers; signals are kept until route(). False off the main thread (nothing installed)."""
    global _ignored
    if threading.current_thread() is not threading.main_thread():
        return False
    if _ignored is None:
        _ignored = {s for s in STOP_SIGNALS if signal.getsignal(s) == signal.SIG_IGN}
    for signum in STOP_SIGNALS:
        if signum not in _ignored:
            signal.signal(signum, _on_signal)
    return True


def route(on_stop: Callable[[str], None]) -> None:
    """From now on a stop signal calls on_stop(reason); one received earlier is delivered now."""
    global _target
    if not hold():
        return
    _target = on_stop
    while _held:
        on_stop(_held.pop(0))
