"""What a job method's handler returns: the work to queue, planned and validated up front."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..jobs.context import JobContext


@dataclass
class Work:
    run: Callable[[JobContext], Any]
    model_id: str | None
    device_id: str  # what the host sees
    executor: str = "default"  # which device queue runs it
    preview: bool = False
