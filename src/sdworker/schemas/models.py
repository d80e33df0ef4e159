"""Shapes of the model.* methods: discovery, metadata, loading, the caches, validation, benchmarks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import JobResult, Params, Result

Kind = Literal["checkpoint", "vae", "lora", "embedding", "controlnet", "upscaler", "unet", "text_encoder", "unknown"]
DeviceName = str  # "ram", "cpu", "cuda", "cuda:N"


class ModelItem(Result):
    model_id: str
    kind: str
    base_model: str
    format: str
    path: str
    size_bytes: int
    size_mb: float
    modified_at: str
    pickle: bool
    details: dict[str, Any] = Field(description="what detection found (architecture hints, token, format details, errors)")


class ListModelsParams(Params):
    kind: Kind | None = None
    base_model: str | None = None
    refresh: bool = False  # rescan now instead of trusting the cached listing


class ListModelsResult(Result):
    items: list[ModelItem]
    count: int


class SearchParams(Params):
    query: str | None = None  # words matched (all of them, any order) against id, path and metadata title
    kind: Kind | None = None
    base_model: str | None = None
    format: str | None = None
    min_size_mb: float | None = None
    max_size_mb: float | None = None
    limit: int = Field(default=100, ge=1, le=10000)


class ModelRefParams(Params):
    model_id: str = Field(min_length=1)
    kind: Kind | None = None  # when the same id exists as two kinds


class MetadataParams(ModelRefParams):
    hashes: bool = True  # full SHA-256 (computed once per file version, then cached)


class UpdateMetadataParams(ModelRefParams):
    metadata: dict[str, Any]
    replace: bool = False  # replace the sidecar instead of merging into it


class LoadParams(ModelRefParams):
    device: DeviceName | None = None  # "ram": RAM cache only; default: the worker's device
    dtype: Literal["fp32", "fp16", "bf16"] | None = None


class LoadComponentParams(LoadParams):
    component: str | None = None  # load_encoder: text_encoder / text_encoder_2 (default: all encoders)


class UnloadParams(Params):
    model_id: str | None = None  # None: every resident model
    keep_in_ram: bool = False  # move the weights to the RAM cache instead of dropping them


class ClearCacheParams(Params):
    model_id: str | None = None
    component: str | None = None


class OptimizeModelParams(ModelRefParams):
    mode: Literal["auto", "none", "model_cpu_offload", "sequential_cpu_offload", "attention_slicing", "vae_slicing", "vae_tiling"] = "auto"


class ValidateModelParams(ModelRefParams):
    load: bool = False  # also load it
    smoke: bool = False  # also generate one small image with one step (implies load)


class BenchmarkParams(ModelRefParams):
    width: int = Field(default=512, ge=64, le=4096)
    height: int = Field(default=512, ge=64, le=4096)
    steps: int = Field(default=4, ge=1, le=100)
    repeats: int = Field(default=2, ge=1, le=20)
    device: DeviceName | None = None


class CompareVaesParams(Params):
    vae_ids: list[str] = Field(min_length=1, max_length=16)  # VAE ids, or "model:<checkpoint id>" for a model's own VAE
    images: list[str] = Field(default_factory=list, max_length=16)  # base64 or paths; default: a built-in set
    size: int = Field(default=256, ge=64, le=2048)
    device: DeviceName | None = None


# ---- results ---------------------------------------------------------------------------------------
# What each model.* method answers. Nested rows whose keys depend on the file or the device (detection
# details, sidecar metadata, cache entries) stay open objects; the keys listed are always sent.


class CacheEntry(Result):
    """One RAM/VRAM cache entry (managers/memory.py)."""

    key: str
    component: str
    model_ids: list[str]
    device: str
    dtype: str | None = None
    bytes: int
    mb: float
    last_used: str | None
    pinned: bool
    source: str | None = None


class PipelineRow(Result):
    """A resident pipeline (managers/pipelines.py)."""

    model_id: str
    base_model: str
    pipeline_class: str
    device: str
    dtype: str
    weights: Any = None
    load_ms: float | None = None
    memory_mode: str | None = None
    runs: int
    modes: list[str]
    components: dict[str, Any]


class ModelInfoResult(ModelItem):
    loaded: bool
    pipelines: list[PipelineRow]
    cache_entries: list[CacheEntry]
    user_metadata: dict[str, Any]
    user_metadata_error: str | None = Field(default=None, description="only when the sidecar could not be read")


class MetadataResult(Result):
    model_id: str
    path: str
    name: str
    format: str
    kind: str
    base_model: str
    details: dict[str, Any]
    size: int
    pickle: bool
    tensor_count: int | None
    metadata: dict[str, Any]
    sidecar_path: str
    sidecar: dict[str, Any]
    sidecar_error: str | None = Field(default=None, description="only when the sidecar could not be read")
    hashes: dict[str, Any] | None = Field(default=None, description="with hashes: SHA-256 and A1111's short hashes; null for a folder")


class UpdateMetadataResult(Result):
    model_id: str
    sidecar_path: str
    metadata: dict[str, Any]


class ComponentRow(Result):
    name: str
    cached: bool
    device: str | None
    size_bytes: int
    shared_with: list[str]
    library: str | None = Field(default=None, description="diffusers folders only")
    class_: str | None = Field(default=None, alias="class", description="diffusers folders only")


class ComponentsResult(Result):
    model_id: str
    kind: str
    format: str
    components: list[ComponentRow]


class LoadModelResult(Result):
    model_id: str
    device: str
    dtype: str
    load_ms: float
    loaded_from: Literal["disk", "cache"]
    components_read: int
    pipeline: PipelineRow


class LoadComponentsResult(Result):
    """load_vae, load_unet, load_encoder, load_lora: the cache entries now holding the weights."""

    model_id: str
    device: str
    dtype: str | None = Field(default=None, description="all but load_lora")
    load_ms: float
    components: list[CacheEntry]
    base_model: str | None = Field(default=None, description="load_lora only")
    tensors: int | None = Field(default=None, description="load_lora only")


class UnloadResult(Result):
    unloaded: list[str]
    moved_to_ram_mb: float
    freed_mb: float


class CacheStatusResult(Result):
    entries: list[CacheEntry]
    ram: dict[str, float | None]
    vram: dict[str, float | None]
    evictions: int
    offloads: int
    pipelines: list[PipelineRow]
    rss_mb: float
    replicas: list[dict[str, Any]] | None = Field(default=None, description="cluster mode: one row per replica")


class VramDeviceRow(Result):
    device_id: str
    total_mb: float
    free_mb: float
    allocated_mb: float
    reserved_mb: float
    budget_mb: float | None
    cached_mb: float
    models: list[str]
    entries: list[CacheEntry]


class VramStatusResult(Result):
    cuda_available: bool
    devices: list[VramDeviceRow]


class ClearCacheResult(Result):
    dropped: int
    freed_mb: float
    pinned_kept: list[str]


class OptimizeMemoryResult(Result):
    offloaded_to_ram_mb: float
    vram_cached_mb: dict[str, float]
    rss_mb: dict[str, float]


class OptimizeModelResult(Result):
    model_id: str
    mode: str
    applied: list[str]


class ModelCheck(Result):
    name: str
    ok: bool
    message: str


class ValidateModelResult(JobResult):
    model_id: str
    kind: str
    base_model: str
    valid: bool
    checks: list[ModelCheck]


class BenchmarkResult(JobResult):
    """A checkpoint's load and steps/s, or (kind vae) a VAE's encode/decode time."""

    model_id: str
    device: str
    dtype: str
    width: int
    height: int
    peak_vram_mb: float | None
    kind: str | None = Field(default=None, description="vae: the VAE benchmark")
    cold_load_ms: float | None = None
    components_read: int | None = None
    cached_reload_ms: float | None = None
    cached_speedup: float | None = None
    steps: int | None = None
    seconds_per_run: list[float] | None = None
    steps_per_second: float | None = None
    model_mb: float | None = None
    load_ms: float | None = None
    encode_ms: float | None = None
    decode_ms: float | None = None
    vae_mb: float | None = None


class CompareVaesResult(JobResult):
    images: int
    size: int
    device: str
    dtype: str
    results: list[dict[str, Any]] = Field(description="per VAE: vae_id, its scores (psnr, ssim), seconds")
    best: str
