"""What a job handler gets: its session, progress reporting and the cancel check."""

from __future__ import annotations

import time
from typing import Any, Callable

from .sessions import Session
from ..errors import Cancelled, TimedOut
from ..protocol.events import EventEmitter


class JobContext:
    def __init__(
        self,
        session: Session,
        events: EventEmitter,
        on_status: Callable[[Session, str], None],
        preview: bool = False,
    ):
        self.session = session
        self.events = events
        self._on_status = on_status
        self.preview = preview
        self.partial: dict[str, Any] | None = None  # results kept if the job is cancelled with preserve
        self._steps_started: float | None = None

    @property
    def device_id(self) -> str:
        return self.session.device_id

    def set_status(self, status: str) -> None:
        self._on_status(self.session, status)

    def log(self, message: str, level: str = "info") -> None:
        self.session.log(message, level)

    def check_cancelled(self, mid_step: bool = False) -> None:
        """Raise if the job was cancelled or timed out. Mid-step checks honour force cancels only."""
        s = self.session
        if not s.cancel_event.is_set():
            return
        if mid_step and not s.force_cancel and s.cancel_reason != "timeout":
            return
        if s.cancel_reason == "timeout":
            raise TimedOut("the job passed its timeout and was stopped", data=self._kept())
        raise Cancelled("the job was cancelled", data=self._kept())

    def _kept(self) -> dict[str, Any] | None:
        return self.partial if self.session.preserve_results else None

    def progress(self, step: int, total: int, image_index: int = 0, extra: dict[str, Any] | None = None) -> None:
        """Record step `step` of `total` done; the event is throttled, the last step always sent."""
        now = time.perf_counter()
        s = self.session
        if self._steps_started is None:
            self._steps_started = now
        s.step, s.total_steps = step, total
        elapsed = now - self._steps_started
        s.eta_seconds = round(elapsed / step * (total - step), 2) if step > 0 else None
        data: dict[str, Any] = {**s.progress(), "image_index": image_index}
        if extra:
            data.update(extra)
        # a preview is never thrown away by the rate limit (previews come every few steps only)
        self.events.emit("progress", data, throttle=step < total and not (extra and "preview" in extra))

    def start_steps(self) -> None:
        self._steps_started = time.perf_counter()
