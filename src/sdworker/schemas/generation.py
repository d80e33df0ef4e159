"""The canonical generation request and its result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .. import limits
from .base import JobResult, Params, Result
from .normalize import normalize_generation
from .optimize import OPTIMIZE_DESCRIPTION, Optimize, normalize_optimize

MAX_SEED = 2**63 - 1


class OutputOptions(Params):
    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(default=95, ge=1, le=100)
    save_path: str | None = Field(default=None, description="a file or folder inside --output-dir; an existing file is never replaced unless overwrite is true")
    return_base64: bool = True
    overwrite: bool = Field(default=False, description="let save_path replace an existing file")

    @field_validator("format", mode="before")
    @classmethod
    def _fmt(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.lower().lstrip(".")
            return "jpeg" if v == "jpg" else v
        return v


_DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16", "default": "auto"}


class PrecisionOptions(Params):
    """Per-request precision and memory controls; shared components are restored after the run."""

    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(default="auto", description="auto: the worker's dtype (--dtype)")
    cpu_offload: Literal["none", "model", "sequential", "group"] = Field(
        default="none",
        description="model / sequential CPU offload (accelerate hooks), or group: block-level group offload of every model "
        "component (diffusers), for models bigger than the GPU; all need a CUDA device",
    )
    storage_dtype: Literal["auto", "fp8_e4m3fn", "fp8_e5m2"] = Field(
        default="auto",
        description="fp8: keep the UNet/transformer weights in fp8 and cast each layer to dtype as it runs (layerwise casting; "
        "about half the memory of bf16, small quality loss); auto: weights in dtype",
    )
    quantization: Literal["none", "bnb_nf4", "bnb_int8", "torchao_int8wo"] = Field(
        default="none",
        description="load the UNet/transformer quantized: bitsandbytes NF4 / int8 (CUDA) or torchao int8 weight-only; "
        "needs that package installed (validation_error otherwise)",
    )
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower().removeprefix("torch.")
            return _DTYPE_NAMES.get(v, v)
        return v

    @field_validator("cpu_offload", mode="before")
    @classmethod
    def _offload(cls, v: Any) -> Any:
        if v is None or v is False:
            return "none"
        if v is True:
            return "model"
        return v.strip().lower().removesuffix("_cpu_offload") if isinstance(v, str) else v


class RefinerOptions(Params):
    """SDXL base + refiner: the base denoises up to switch_at, the refiner (img2img) finishes."""

    model: str = Field(min_length=1, description="an SDXL refiner (or any SDXL model) in the models dirs")
    switch_at: float = Field(default=0.8, gt=0.0, lt=1.0, description="fraction of the steps the base runs (diffusers' denoising_end)")


class HiresOptions(Params):
    """A1111's hires fix for text2img: generate, upscale, then an img2img pass at the larger size."""

    scale: float = Field(default=2.0, ge=1.0, le=4.0, description="upscale factor (ignored when width/height are given)")
    upscaler: Literal["latent", "latent_nearest_exact", "latent_bicubic", "lanczos"] = Field(
        default="latent", description="latent: bilinear on the latents (A1111's Latent); lanczos: decode, resize, encode"
    )
    steps: int | None = Field(default=None, ge=1, le=1000, description="second-pass steps; default: the request's steps")
    denoise: float = Field(default=0.5, gt=0.0, le=1.0, description="second-pass strength (A1111's denoising strength)")
    width: int | None = Field(default=None, ge=64, le=8192, description="final width (A1111's hr_resize_x); default: width x scale")
    height: int | None = Field(default=None, ge=64, le=8192, description="final height; default: height x scale")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "denoising_strength" in data:
            data = dict(data)
            value = data.pop("denoising_strength")
            data.setdefault("denoise", value)
        return data

    @field_validator("upscaler", mode="before")
    @classmethod
    def _upscaler(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        key = "".join(ch for ch in v.lower() if ch.isalnum())  # "Latent (nearest-exact)" -> latentnearestexact
        return {"latent": "latent", "latentnearestexact": "latent_nearest_exact", "latentbicubic": "latent_bicubic", "lanczos": "lanczos"}.get(key, v)


class LoRARef(Params):
    """One LoRA of a request. Nested requests send {ModelPath, Weight}; A1111 prompt tags add more."""

    name: str = Field(min_length=1, max_length=1000, description="LoRA id, file name or path inside the models dirs (aliases path, model_path, model, model_id)")
    weight: float = Field(default=1.0, ge=-20.0, le=20.0, description="0 turns it off (aliases scale, strength)")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for aliases, canonical in ((("path", "model_path", "model", "model_id"), "name"), (("scale", "strength"), "weight")):
            present = [k for k in aliases if k in data]
            if not present:
                continue
            if canonical in data or len(present) > 1:
                raise ValueError(f"give only one of {canonical}, {', '.join(aliases)}")
            data[canonical] = data.pop(present[0])
        return data


# Other names hosts use for ControlNet fields (the C# request's ModelPath/ConditioningImage/Weight,
# A1111's module/weight/guidance_start/guidance_end, diffusers' argument names).
_CONTROLNET_ALIASES = {
    "model_path": "model",
    "model_id": "model",
    "name": "model",
    "conditioning_image": "image",
    "control_image": "image",
    "input_image": "image",
    "weight": "conditioning_scale",
    "controlnet_conditioning_scale": "conditioning_scale",
    "module": "preprocessor",
    "guidance_start": "start",
    "control_guidance_start": "start",
    "guidance_end": "end",
    "control_guidance_end": "end",
}


class ControlNetOptions(Params):
    """One ControlNet of a request. Ranges are checked when the request is planned
    (managers.controlnet.plan_controlnets), with paths data.controlnets[i].field."""

    model: str | None = Field(default=None, description="a ControlNet in the models dirs (kind controlnet); alias model_path")
    image: str | None = Field(default=None, description="the control image: base64 or a path inside an allowed root; alias conditioning_image; resized to the output size")
    conditioning_scale: float = Field(default=1.0, description="0..2; alias weight")
    preprocessor: str = Field(default="none", description="none, canny, invert, threshold; alias module")
    start: float = Field(default=0.0, description="fraction of the steps where it starts acting, 0..1; alias guidance_start")
    end: float = Field(default=1.0, description="fraction of the steps where it stops, 0..1, above start; alias guidance_end")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for alias, canonical in _CONTROLNET_ALIASES.items():
                if alias in data:
                    data.setdefault(canonical, data.pop(alias))
        return data


class GenerationRequest(Params):
    """What every generation method reads, after shape normalization."""

    prompt: str = Field(default="", description="at most --max-prompt-chars characters (default 10000)")
    negative_prompt: str | None = Field(default=None, description="at most --max-prompt-chars characters")
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
    true_cfg_scale: float | None = Field(
        default=None, ge=0.0, le=100.0,
        description="Flux: real classifier-free guidance with the negative prompt (diffusers' true_cfg_scale; guidance_scale is "
        "the distilled guidance there); absent or <= 1: off. Ignored by SD models",
    )
    max_sequence_length: int | None = Field(
        default=None, ge=1, le=512, description="Flux: T5 prompt tokens; default 512 (dev, krea), 256 (schnell). Ignored by SD models"
    )
    prompt_syntax: Literal["a1111", "compel", "none"] = Field(
        default="a1111",
        description="a1111: (word:1.2), [word], BREAK, 75-token chunks; compel: compel's syntax (needs compel installed); none: literal text",
    )
    vae: str | None = Field(
        default=None,
        description='a VAE in the models dirs (kind vae), used for this run only; "model": the model\'s own; absent: the model\'s own, '
        "or with fp16 on SDXL an fp16-safe VAE from the models dirs when there is one",
    )
    refiner: RefinerOptions | None = Field(default=None, description="SDXL only: {model, switch_at}; text2img and img2img")
    precision: PrecisionOptions = Field(default_factory=PrecisionOptions)
    optimize: Optimize | None = Field(default=None, description=OPTIMIZE_DESCRIPTION)
    hires: HiresOptions | None = Field(default=None, description="text2img only: A1111's hires fix {scale, upscaler, steps, denoise, width, height}")
    controlnets: list[ControlNetOptions] = Field(
        default_factory=list,
        description="ControlNets guiding text2img, img2img or inpainting: [{model, image, conditioning_scale, preprocessor, start, end}]",
    )
    loras: list[LoRARef] = Field(
        default_factory=list, max_length=32, description="[{name or path, weight}]; <lora:name:weight> tags in the prompt add to these"
    )
    post_processing: list[PostProcessStep] = Field(
        default_factory=list, max_length=8, description="after generation: [{type: \"upscale\", factor, model, tile}] (model: an upscaler id; none: Lanczos)"
    )
    textual_inversions: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="embeddings (kind embedding) to check and load for this model; any embedding whose file name is in the prompt or negative prompt is used anyway (A1111)",
    )

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        return normalize_generation(data)

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_length(cls, v: str | None) -> str | None:
        return limits.check_prompt(v)  # the limit is a setting, so it is not a static maxLength

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, v: Any) -> Any:
        return None if v == -1 else v

    @field_validator("refiner", mode="before")
    @classmethod
    def _refiner(cls, v: Any) -> Any:
        return {"model": v} if isinstance(v, str) else v

    @field_validator("vae", mode="before")
    @classmethod
    def _vae(cls, v: Any) -> Any:
        if isinstance(v, str):
            key = v.strip().lower()
            if key in ("", "auto", "automatic"):
                return None  # A1111's "Automatic"
            if key in ("model", "none", "default", "baked"):
                return "model"  # A1111's "None": the checkpoint's own VAE
        return v

    @field_validator("controlnets", mode="before")
    @classmethod
    def _controlnets(cls, v: Any) -> Any:
        if v is None:
            return []
        return [v] if isinstance(v, dict) else v  # one ControlNet may come as an object

    @field_validator("preset", mode="before")
    @classmethod
    def _preset(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("optimize", mode="before")
    @classmethod
    def _optimize(cls, v: Any) -> Any:
        return normalize_optimize(v)

    @field_validator("session_id", mode="before")
    @classmethod
    def _sid(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class ParsePromptParams(Params):
    prompt: str = Field(description="at most --max-prompt-chars characters (default 10000)")
    model_id: str | None = Field(default=None, description="when this model is loaded: token counts per tokenizer")

    @field_validator("prompt")
    @classmethod
    def _prompt_length(cls, v: str) -> str:
        return limits.check_prompt(v)  # type: ignore[return-value]


class ParsePromptResult(Result):
    chunks: list[tuple[str, float]] = Field(description="A1111 (text, weight) pieces; BREAK is [\"BREAK\", -1.0]")
    model_loaded: bool = False
    token_counts: dict[str, int] | None = Field(default=None, description="tokenizer name -> tokens, without BOS/EOS")
    chunks_per_encoder: dict[str, int] | None = Field(default=None, description="tokenizer name -> 75-token chunks")


class ImageFile(Result):
    """One image of a result, as PNG/JPEG/WebP bytes in base64 and/or a saved file."""

    index: int
    width: int
    height: int
    format: str
    base64: str | None = None
    path: str | None = None
    infotext: str


class ImageResult(ImageFile):
    seed: int


class Performance(Result):
    queue_ms: float = 0.0
    load_ms: float = 0.0
    loaded_from: str | None = None  # "disk" (a component was read) or "cache" (all from RAM/VRAM)
    adapters_ms: float = 0.0  # LoRAs and embeddings put on the shared modules for this run
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    encode_ms: float = 0.0
    total_ms: float = 0.0
    steps_per_second: float = 0.0
    peak_vram_mb: float | None = None
    peak_rss_mb: float | None = None
    upscale_ms: float | None = Field(default=None, description="with post_processing: the upscale steps")
    compile_ms: float | None = Field(default=None, description="when this run compiled the model (optimize)")
    compiled_graphs: int | None = Field(default=None, description="graphs torch.compile built in this run (optimize.compile)")
    cache_skipped_steps: int | None = Field(default=None, description="denoiser calls answered from the step cache (optimize.cache)")


class GenerationResult(JobResult):
    images: list[ImageResult]
    parameters: dict[str, Any] = Field(
        description="the effective request after presets and defaults: mode, prompt, model_id, base_model, width, height, steps, "
        "guidance_scale, seed, scheduler, sampler_name, vae, device, dtype, precision, hashes (A1111's model/LoRA/embedding "
        "hashes, as in the infotext), and per feature loras, controlnets, hires, refiner, preset_origin, ..."
    )
    performance: Performance
    session_id: str
    warnings: list[str] = Field(default_factory=list)


class ValidateResult(Result):
    valid: bool
    errors: list[dict[str, str]]
    normalized: dict[str, Any] | None = None


from .postprocess import PostProcessStep  # noqa: E402  (postprocess imports this module's OutputOptions)
