"""Post-processing shapes: the inference.upscale request and result, and one post_processing step."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..errors import ValidationFailed
from .base import JobResult, Params

MIN_TILE = 32
MAX_TILE = 4096

# alias -> field, for hosts that name things their own way (A1111 extras, the C# legacy action)
_ALIASES = {
    "scale": "factor",
    "upscale_factor": "factor",
    "upscaling_factor": "factor",
    "upscaling_resize": "factor",
    "upscaler": "model",
    "upscaler_1": "model",
    "model_id": "model",
    "model_name": "model",
    "init_image": "image",
    "input_image": "image",
    "tile_size": "tile",
}
_NO_MODEL = ("", "none", "lanczos")  # A1111's names for "resize only"


def _apply_aliases(data: dict[str, Any], path: str) -> dict[str, Any]:
    out = dict(data)
    for alias, name in _ALIASES.items():
        if alias in out:
            value = out.pop(alias)
            if name in out and out[name] != value:
                raise ValidationFailed(
                    f"{path}.{alias} and {path}.{name} disagree",
                    [{"path": f"{path}.{alias}", "message": f"alias of {name}, which is also given"}],
                    rooted=not path.startswith("data"),  # an item's alias is named as it was before paths were placed
                )
            out[name] = value
    return out


def _model(v: Any) -> Any:
    if isinstance(v, str) and v.strip().lower() in _NO_MODEL:
        return None
    return v


def _tile(v: int | None) -> int | None:
    if v is not None and v != 0 and v < MIN_TILE:
        raise ValueError(f"tile must be 0 (no tiling) or at least {MIN_TILE} pixels")
    return v


class PostProcessStep(Params):
    """One entry of a generation's post_processing list."""

    type: Literal["upscale"] = Field(description="upscale: a model (ESRGAN family) and/or Lanczos to factor x the size")
    factor: float = Field(default=2.0, ge=1.0, le=8.0, description="output size / input size")
    model: str | None = Field(default=None, description="an upscaler in the models dirs (kind upscaler); absent: Lanczos only")
    tile: int | None = Field(default=None, ge=0, le=MAX_TILE, description="tile side in input pixels; 0: whole image at once; default 512")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = _apply_aliases(data, "post_processing[]")
            if isinstance(data.get("type"), str):
                data["type"] = data["type"].strip().lower()
        return data

    @field_validator("model", mode="before")
    @classmethod
    def _no_model(cls, v: Any) -> Any:
        return _model(v)

    @field_validator("tile")
    @classmethod
    def _tile_size(cls, v: int | None) -> int | None:
        return _tile(v)


# Imported after PostProcessStep on purpose: schemas.generation may take PostProcessStep from here
# (an import at its end), and then either module can be imported first.
from .generation import ImageFile, OutputOptions, Performance


class UpscaleRequest(Params):
    """inference.upscale: one image, upscaled by a model and/or Lanczos to factor x its size."""

    image: str = Field(min_length=1, description="base64 (data: prefix allowed) or a path inside an allowed root (the output dir, an --input-dir)")
    factor: float = Field(default=2.0, ge=1.0, le=8.0, description="output size / input size (aliases scale, upscale_factor)")
    model: str | None = Field(
        default=None,
        description="an upscaler in the models dirs (kind upscaler, alias model_id); absent, 'none' or 'lanczos': Lanczos only. "
        "The model runs once at its own scale; Lanczos then makes the size factor x the input",
    )
    tile: int | None = Field(default=None, ge=0, le=MAX_TILE, description="tile side in input pixels (each tile also sees a margin of up to 32 px); 0: whole image at once; default 512")
    session_id: str | None = Field(default=None, min_length=1, max_length=200)
    device_id: str | None = None
    output: OutputOptions = Field(default_factory=OutputOptions)

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        bag = data.pop("parameters", None)  # the flat shape's bag (and the legacy action's), merged under the top level
        if isinstance(bag, dict):
            data = {**bag, **data}
        for ignored in ("prompt", "negative_prompt"):  # legacy hosts send them with every action
            if data.get(ignored) in (None, ""):
                data.pop(ignored, None)
        return _apply_aliases(data, "data")

    @field_validator("model", mode="before")
    @classmethod
    def _no_model(cls, v: Any) -> Any:
        return _model(v)

    @field_validator("tile")
    @classmethod
    def _tile_size(cls, v: int | None) -> int | None:
        return _tile(v)

    @field_validator("session_id", mode="before")
    @classmethod
    def _sid(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class UpscaledImage(ImageFile):
    """An upscaled image (no seed: nothing was sampled)."""


class UpscaleResult(JobResult):
    images: list[UpscaledImage]
    parameters: dict[str, Any]
    performance: Performance
    session_id: str
    warnings: list[str] = Field(default_factory=list)
