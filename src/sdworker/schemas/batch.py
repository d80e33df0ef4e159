"""inference.batch_process: many generation requests as one job, batched into shared pipeline calls."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from .base import JobResult, Params, Result
from .generation import ImageResult, Performance


class BatchConfig(Params):
    batch_size: int = Field(default=4, ge=1, le=64, description="most images per pipeline call (capped at --max-batch-size)")
    enable_dynamic_sizing: bool = Field(
        default=True,
        description="run fewer images per call when the estimated working memory would pass memory_threshold of the free memory",
    )
    memory_threshold: float = Field(default=0.8, gt=0.0, le=1.0, description="fraction of free memory (RAM on cpu, VRAM on cuda) a call may use")
    parallel_processing: bool = Field(default=False, description="accepted for the host's shape; one device runs one call at a time")


class BatchRequest(Params):
    """`requests`: generation requests (the canonical request of prompt_submission_schema.json, each with an
    optional `type`/`mode`: text2img, img2img or inpainting). Each item is validated on its own: a bad item
    gets an error entry in the result and the others still run."""

    requests: list[dict[str, Any]] = Field(min_length=1, max_length=256)
    batch_config: BatchConfig = Field(default_factory=BatchConfig)
    session_id: str | None = Field(default=None, min_length=1, max_length=200)
    device_id: str | None = None
    preview: bool = False

    @field_validator("session_id", mode="before")
    @classmethod
    def _sid(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class ItemError(Result):
    error_code: str
    error: str
    error_details: list[dict[str, Any]] = Field(default_factory=list)


class BatchItemResult(Result):
    index: int
    success: bool
    images: list[ImageResult] | None = None
    parameters: dict[str, Any] | None = None
    error: ItemError | None = None


class BatchPerformance(Performance):
    """A single request's timings plus how the batch was split."""

    groups: int = 0
    pipeline_calls: int = 0
    images: int = 0
    batch_sizes: list[int] = Field(default_factory=list, description="images per pipeline call, in run order")
    memory_estimates: list[Any] | None = Field(default=None, description="when memory limited a group's batch size: the estimates")


class BatchResult(JobResult):
    items: list[BatchItemResult]
    session_id: str
    performance: BatchPerformance
    warnings: list[str] = Field(default_factory=list)
