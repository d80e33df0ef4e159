"""The canonical generation request and its result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import Params, Result
from .normalize import normalize_generation

MAX_SEED = 2**63 - 1


class OutputOptions(Params):
    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(default=95, ge=1, le=100)
    save_path: str | None = None
    return_base64: bool = True

    @field_validator("format", mode="before")
    @classmethod
    def _fmt(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.lower().lstrip(".")
            return "jpeg" if v == "jpg" else v
        return v


class GenerationRequest(Params):
    """What every generation method reads, after shape normalization."""

    prompt: str = Field(default="", max_length=20000)
    negative_prompt: str | None = Field(default=None, max_length=20000)
    model_id: str | None = Field(default=None, description="model folder or file name inside --models-dir (alias model_name)")
    width: int | None = Field(default=None, ge=64, le=8192, multiple_of=8, description="default: the model's native size")
    height: int | None = Field(default=None, ge=64, le=8192, multiple_of=8)
    steps: int = Field(default=20, ge=1, le=1000, description="alias num_inference_steps")
    guidance_scale: float = Field(default=7.0, ge=0.0, le=100.0, description="alias cfg_scale")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="-1 or absent: random; image i uses seed + i")
    num_images: int = Field(default=1, ge=1, le=64, description="alias batch_size")
    scheduler: str | None = Field(default=None, description="default: the model's own scheduler")
    sampler: str | None = None
    strength: float = Field(default=0.75, gt=0.0, le=1.0, description="img2img/inpainting: how much of the init image is replaced")
    init_image: str | None = Field(default=None, description="img2img/inpainting: base64 (data: prefix allowed) or a path inside an allowed root")
    mask_image: str | None = Field(default=None, description="inpainting: white = repaint; same size as init_image")
    session_id: str | None = Field(default=None, min_length=1, max_length=200)
    device_id: str | None = None
    preview: bool = False
    output: OutputOptions = Field(default_factory=OutputOptions)
    preset: Literal["quality", "speed"] | None = Field(
        default=None,
        description="apply the model's quality or speed preset (config.resolve) under the fields this request sets itself",
    )
    clip_skip: int | None = Field(
        default=None, ge=1, le=12, description="A1111 style: 1 = last layer (the default), 2 = penultimate, ..."
    )
    prompt_syntax: Literal["a1111", "compel", "none"] = Field(
        default="a1111",
        description="a1111: (word:1.2), [word], BREAK, 75-token chunks; compel: compel's syntax (needs compel installed); none: literal text",
    )

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        return normalize_generation(data)

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, v: Any) -> Any:
        return None if v == -1 else v

    @field_validator("preset", mode="before")
    @classmethod
    def _preset(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("session_id", mode="before")
    @classmethod
    def _sid(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class ParsePromptParams(Params):
    prompt: str = Field(max_length=20000)
    model_id: str | None = Field(default=None, description="when this model is loaded: token counts per tokenizer")


class ParsePromptResult(Result):
    chunks: list[tuple[str, float]] = Field(description="A1111 (text, weight) pieces; BREAK is [\"BREAK\", -1.0]")
    model_loaded: bool = False
    token_counts: dict[str, int] | None = Field(default=None, description="tokenizer name -> tokens, without BOS/EOS")
    chunks_per_encoder: dict[str, int] | None = Field(default=None, description="tokenizer name -> 75-token chunks")


class ImageResult(Result):
    index: int
    seed: int
    width: int
    height: int
    format: str
    base64: str | None = None
    path: str | None = None
    infotext: str


class Performance(Result):
    queue_ms: float = 0.0
    load_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    encode_ms: float = 0.0
    total_ms: float = 0.0
    steps_per_second: float = 0.0
    peak_vram_mb: float | None = None
    peak_rss_mb: float | None = None


class GenerationResult(Result):
    images: list[ImageResult]
    parameters: dict[str, Any]
    performance: Performance
    session_id: str
    warnings: list[str] = Field(default_factory=list)


class ValidateResult(Result):
    valid: bool
    errors: list[dict[str, str]]
    normalized: dict[str, Any] | None = None
