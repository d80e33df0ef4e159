"""Session and status shapes of the inference control plane."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .base import Params, Result


class SessionParams(Params):
    session_id: str = Field(min_length=1)
    device_id: str | None = None
    model_id: str | None = None


class SessionStatusParams(SessionParams):
    include_progress: bool = True
    include_metrics: bool = False
    include_resources: bool = False
    include_logs: bool = False


class CancelParams(SessionParams):
    force_cancel: bool = False
    preserve_results: bool = False
    reason: str | None = None


class LogsParams(SessionParams):
    limit: int = Field(default=200, ge=1, le=10000)
    level: str | None = None


class Progress(Result):
    step: int
    total_steps: int
    percent: float
    eta_seconds: float | None = None


class SessionInfo(Result):
    session_id: str
    request_id: str
    model_id: str | None
    device_id: str
    status: str
    started_at: str | None
    finished_at: str | None
    progress: Progress
    queue_position: int | None


class CancelResult(Result):
    session_id: str
    cancelled: bool
    status: str
    action: str
    step: int = 0


class ActiveSessionsParams(Params):
    device_id: str | None = None
    include_interrupted: bool = Field(
        default=False,
        description="also list, under `interrupted`, the sessions that earlier runs of the worker left unfinished "
        "(from the session ledger, newest first, at most 1000): what a host that lost its own state never got an answer for",
    )


class ActiveSessionsResult(Result):
    sessions: list[SessionInfo]
    count: int
    interrupted: list[dict[str, Any]] | None = Field(
        default=None, description="with include_interrupted: the ledger's interrupted sessions (session status shape, source 'ledger')"
    )


class DeviceParams(Params):
    device_id: str | None = None


class Capabilities(Result):
    supported_types: list[str]
    max_concurrent: int
    max_batch_size: int
    max_resolution: dict[str, int]
    devices: list[dict[str, Any]]
    schedulers: list[str]


class PipelineInfoParams(Params):
    model_id: str | None = None


class ValidateParams(Params):
    """A generation request to check: its fields directly, or under `request`."""

    model_config = {"extra": "allow"}
    method: str | None = None
    inference_type: str | None = None
    request: dict[str, Any] | None = None
