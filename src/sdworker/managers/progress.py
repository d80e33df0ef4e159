"""What a manager may ask of the job it works for: progress, the cancel check, a log line.

Managers run inside jobs but know nothing of the job machinery (jobs/, dispatch/): they are
handed anything with this shape (jobs.context.JobContext is one).
"""

from __future__ import annotations

from typing import Any, Protocol


class JobProgress(Protocol):
    #: the request asked for step previews
    preview: bool

    def progress(self, step: int, total: int, image_index: int = 0, extra: dict[str, Any] | None = None) -> None:
        """Step `step` of `total` is done."""

    def check_cancelled(self, mid_step: bool = False) -> None:
        """Raise if the job was cancelled or timed out."""

    def log(self, message: str, level: str = "info") -> None:
        """A line in the session's log."""
