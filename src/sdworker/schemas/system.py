"""system.* shapes."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .base import Params, Result


class PingParams(Params):
    echo: Any = None


class PingResult(Result):
    pong: bool = True
    time: str
    echo: Any = None


class InfoResult(Result):
    version: str
    protocol: int
    pid: int
    python: str
    platform: str
    uptime_s: float
    settings: dict[str, Any] = Field(description="models_dirs, output_dir, data_dir, database, device, dtype, max_queue, limits, ...")
    runtime: dict[str, Any] = Field(description="torch/diffusers state and devices; cluster mode: {mode: cluster, ready}")
    cluster: dict[str, Any] | None = Field(default=None, description="cluster mode: address, replica_gpus, replica_cpus, nodes")
    replicas: list[dict[str, Any]] | None = Field(default=None, description="cluster mode: each replica, its state and models")


class ListMethodsParams(Params):
    include_schemas: bool = True


class MethodInfo(Result):
    name: str
    job: bool
    summary: str
    params_schema: dict[str, Any] | None = None
    result_schema: dict[str, Any] | None = None


class ListMethodsResult(Result):
    methods: list[MethodInfo]


class ShutdownParams(Params):
    cancel_running: bool = False


class ShutdownResult(Result):
    shutting_down: bool = True
    running: list[str]
    queued: int
