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
    replica: dict[str, Any] | None = Field(default=None, description="cluster mode: the replica {id, node, device} running it (null while queued at the front)")


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
    devices: list[dict[str, Any]] = Field(description="device_id, name, type, memory_total_mb, memory_free_mb, default, ...")
    schedulers: list[str]
    base_models: list[str]
    replicas: list[dict[str, Any]] | None = Field(default=None, description="cluster mode: the replicas that answered")


class PipelineInfoParams(Params):
    model_id: str | None = None


class ValidateParams(Params):
    """A generation request to check: its fields directly, or under `request`."""

    model_config = {"extra": "allow"}
    method: str | None = None
    inference_type: str | None = None
    request: dict[str, Any] | None = None


# ---- results of the session and status queries ------------------------------------------------------

_REPLICA = Field(default=None, description="cluster mode: the replica {id, node, device} that ran the job")
_LEDGER = Field(default=None, description="'ledger' when the session is an earlier run's, read from the session ledger")


class SessionStatusResult(Result):
    """A session (this run's, or an earlier run's from the ledger, which adds source, run_id and pid)."""

    session_id: str
    request_id: str | None = None
    method: str | None = None
    model_id: str | None = None
    device_id: str | None = None
    status: str
    priority: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    progress: Progress | None = Field(default=None, description="unless include_progress is false")
    queue_position: int | None = None
    error: str | None = None
    error_code: str | None = None
    outputs: list[Any] | None = None
    transitions: list[dict[str, Any]] | None = None
    performance: dict[str, Any] | None = Field(default=None, description="with include_metrics")
    resources: dict[str, Any] | None = Field(default=None, description="with include_resources")
    logs: list[dict[str, Any]] | None = Field(default=None, description="with include_logs")
    source: str | None = _LEDGER
    replica: dict[str, Any] | None = _REPLICA


class LogsResult(Result):
    session_id: str
    logs: list[dict[str, Any]] = Field(description="{time, level, message}, oldest first")
    count: int
    status: str | None = Field(default=None, description="ledger sessions only")
    transitions: list[dict[str, Any]] | None = Field(default=None, description="ledger sessions only")
    source: str | None = _LEDGER
    replica: dict[str, Any] | None = _REPLICA


class PerformanceResult(Result):
    session_id: str
    status: str
    performance: dict[str, Any]
    source: str | None = _LEDGER
    replica: dict[str, Any] | None = _REPLICA


class ResourcesResult(Result):
    session_id: str
    status: str
    resources: dict[str, Any] = Field(description="device, rss_mb, and what the job recorded (peak memory)")
    replica: dict[str, Any] | None = _REPLICA


class StatusResult(Result):
    status: str = Field(description="idle, busy or starting")
    accepting_jobs: bool
    queue_length: int
    running: list[dict[str, Any]] = Field(description="the running sessions, in the get_session_status shape")
    loaded_models: list[str]
    device: str | None = Field(default=None, description="the worker's default device (one worker; not in cluster mode)")
    uptime_s: float
    replicas: list[dict[str, Any]] | None = Field(default=None, description="cluster mode: each replica, whether it is up, its models")


class DeviceCapabilities(Result):
    """One device's row (as in capabilities.devices) plus what it can run."""

    device_id: str
    name: str | None = None
    type: str | None = None
    memory_total_mb: float | None = None
    memory_free_mb: float | None = None
    supported_types: list[str]
    max_concurrent: int
    max_batch_size: int
    max_resolution: dict[str, int]


class SupportedTypes(Result):
    supported_types: list[str]
    schedulers: list[str]


class DeviceSupportedTypes(Result):
    device_id: str
    supported_types: list[str]


class PipelineInfo(Result):
    model_id: str
    base_model: str
    pipeline_class: str
    modes: list[str]
    scheduler: str
    components: dict[str, str]
    device: str
    dtype: str
    load_ms: float | None
    runs: int


class PipelineInfoResult(Result):
    pipelines: list[PipelineInfo]
    count: int
