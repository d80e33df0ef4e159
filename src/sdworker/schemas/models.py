"""Shapes of the model.* methods: discovery, metadata, loading, the caches, validation, benchmarks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import Params, Result

Kind = Literal["checkpoint", "vae", "lora", "embedding", "controlnet", "upscaler", "unet", "text_encoder", "unknown"]
DeviceName = str  # "ram", "cpu", "cuda", "cuda:N"


class ModelItem(Result):
    model_id: str
    kind: str
    base_model: str
    format: str
    path: str
    size_bytes: int


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
