"""config.* shapes: the inference presets (the `inference_configurations` documents) and their methods."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .base import Params, Result

ConfigurationType = Literal["quality", "speed"]

# Contract section 7: the existing backend's architecture ids.
BaseModelId = Literal[
    "sd_1_5", "sdxl", "pony", "flux_dev", "flux_schnell", "flux_krea", "hidream", "wan_2_1", "wan_2_2",
    "sd_2", "sdxl_refiner", "sd3", "flux", "unknown",
]

Origin = Literal["model", "builtin"]

_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class ModelSpecificParams(BaseModel):
    """Per-architecture values. The keys below are checked; any other key is kept as given."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    width: int | None = Field(default=None, ge=64, le=8192, multiple_of=8)
    height: int | None = Field(default=None, ge=64, le=8192, multiple_of=8)
    clip_skip: int | None = Field(default=None, ge=1, le=12, description="A1111 style: 1 = last layer, 2 = penultimate")
    guidance: float | None = Field(default=None, ge=0, le=100, description="distilled guidance (Flux dev/krea): diffusers' guidance_scale for them")
    shift: float | None = Field(default=None, gt=0, le=100, description="flow-matching sigma shift")
    max_sequence_length: int | None = Field(default=None, ge=1, le=4096)
    num_frames: int | None = Field(default=None, ge=1, le=1024)
    video_fps: float | None = Field(default=None, gt=0, le=240)
    guidance_scale_2: float | None = Field(default=None, ge=0, le=100, description="Wan 2.2: CFG of the low-noise expert")
    boundary_ratio: float | None = Field(default=None, ge=0, le=1, description="Wan 2.2: where the low-noise expert takes over")

    # Not a Params (other keys are kept), but numbers are numbers here too: `clip_skip: true` is no 1.
    _no_bool_for_numbers = field_validator("*", mode="before")(vars(Params)["_no_bool_for_numbers"])


class _PresetValues(Params):
    steps: int = Field(ge=1, le=1000)
    cfg_scale: float = Field(ge=0, le=100, description="classifier-free guidance; 1 = off")
    sampler: str | None = Field(default=None, max_length=100, description="stored as given, e.g. dpmpp_2m, euler_a")
    scheduler: str | None = Field(default=None, max_length=100, description="sigma schedule, e.g. karras, normal, simple")
    model_specific_params: ModelSpecificParams = Field(default_factory=ModelSpecificParams)


class PresetCreateParams(_PresetValues):
    model_id: str = Field(min_length=1, max_length=500)
    configuration_type: ConfigurationType
    base_model: BaseModelId | None = Field(default=None, description="default: detected from the model in the models dirs")
    id: str | None = Field(default=None, pattern=_UUID, description="a uuid; generated when omitted")


_NOT_NULL = ("model_id", "configuration_type", "base_model", "steps", "cfg_scale", "model_specific_params")


class PresetUpdateParams(Params):
    """Only the fields sent change; model_specific_params is replaced whole; sampler/scheduler may be null."""

    id: str = Field(min_length=1, max_length=200)
    model_id: str | None = Field(default=None, min_length=1, max_length=500)
    configuration_type: ConfigurationType | None = None
    base_model: BaseModelId | None = None
    steps: int | None = Field(default=None, ge=1, le=1000)
    cfg_scale: float | None = Field(default=None, ge=0, le=100)
    sampler: str | None = Field(default=None, max_length=100)
    scheduler: str | None = Field(default=None, max_length=100)
    model_specific_params: ModelSpecificParams | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> "PresetUpdateParams":
        nulls = [f for f in _NOT_NULL if f in self.model_fields_set and getattr(self, f) is None]
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null")
        return self


class PresetIdParams(Params):
    id: str = Field(min_length=1, max_length=200)


class PresetListParams(Params):
    model_id: str | None = None
    base_model: str | None = None
    configuration_type: ConfigurationType | None = None
    include_builtin: bool = Field(default=False, description="also list the built-in presets (origin builtin) that match")
    limit: int = Field(default=1000, ge=1, le=10000)
    offset: int = Field(default=0, ge=0)


class PresetResolveParams(Params):
    model_id: str | None = Field(default=None, min_length=1)
    base_model: str | None = Field(default=None, min_length=1)
    configuration_type: ConfigurationType

    @model_validator(mode="after")
    def _one_of(self) -> "PresetResolveParams":
        if self.model_id is None and self.base_model is None:
            raise ValueError("send model_id or base_model (or both)")
        return self


class PresetPopulateParams(Params):
    model_ids: list[str] | None = Field(default=None, description="only these models (default: every discovered model)")
    configuration_types: list[ConfigurationType] = Field(default_factory=lambda: ["quality", "speed"], min_length=1)
    dry_run: bool = False


class PresetImportParams(Params):
    jsonl: str | None = Field(default=None, description="mongoexport output: one document per line (or a --jsonArray array)")
    path: str | None = Field(default=None, description="a file inside --data-dir, --input-dir or --output-dir")
    on_conflict: Literal["error", "skip", "replace"] = Field(
        default="error", description="a document whose id or (model_id, configuration_type) exists: fail all, skip it, or replace"
    )

    @model_validator(mode="after")
    def _one_source(self) -> "PresetImportParams":
        if (self.jsonl is None) == (self.path is None):
            raise ValueError("send exactly one of jsonl or path")
        return self


class PresetExportParams(Params):
    model_id: str | None = None
    base_model: str | None = None
    configuration_type: ConfigurationType | None = None
    path: str | None = Field(default=None, description="write the file there (inside --output-dir or --data-dir) instead of returning it")


# ---- results -----------------------------------------------------------------------------------------


class Preset(Result):
    """A document of the collection, plus `origin` (and `source` for built-ins)."""

    id: str
    model_id: str | None = Field(description="null for built-ins")
    base_model: str
    configuration_type: ConfigurationType
    steps: int
    cfg_scale: float
    sampler: str | None
    scheduler: str | None
    model_specific_params: dict[str, Any]
    created_at: str | None = Field(description="ISO 8601 UTC; null for built-ins")
    updated_at: str | None
    origin: Origin
    source: str | None = Field(default=None, description="built-ins: where the values come from")


class PresetListResult(Result):
    items: list[Preset]
    count: int
    total: int = Field(description="matching presets before limit/offset")


class PresetDeleteResult(Result):
    deleted: bool
    id: str


class PopulatedModel(Result):
    model_id: str
    base_model: str
    created: list[ConfigurationType]
    skipped: list[ConfigurationType]
    reason: str | None = None


class PresetPopulateResult(Result):
    created: int
    skipped: int
    items: list[Preset]
    models: list[PopulatedModel]
    dry_run: bool = False


class PresetImportResult(Result):
    total: int = Field(description="documents read")
    imported: int = Field(description="inserted, replacements included")
    replaced: int
    skipped: int
    skipped_ids: list[str]


class PresetExportResult(Result):
    count: int
    jsonl: str | None = None
    path: str | None = None
