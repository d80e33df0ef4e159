"""Stable Diffusion 3 / 3.5 (Medium, Large, Large Turbo) through diffusers' StableDiffusion3 pipelines.

How a request maps onto StableDiffusion3Pipeline (diffusers 0.42):

* Prompt: plain text to the three encoders (CLIP-L, CLIP-G and T5; ``prompt_2``/``prompt_3`` default
  to ``prompt``). The pipeline takes no A1111 weighting: with ``prompt_syntax`` "a1111" a prompt with
  weights, brackets or BREAK is sent as its plain text and the result warns; "compel" is refused.
* Guidance: ``guidance_scale`` is classifier-free guidance with the negative prompt, as on SD 1.5/SDXL
  (guidance 1 or less: no second pass, the negative prompt is not used). ``clip_skip`` is passed on.
* ``max_sequence_length``: T5 tokens, at most 512 (the schema's limit, the pipeline's too), default 256.
* Sampler: the model's own FlowMatchEulerDiscreteScheduler (ComfyUI "euler" + "simple"/"normal").
* Defaults (no preset): 28 steps at guidance 3.5 (the SD 3.5 Large card); Medium (told by its
  MMDiT-X dual-attention layers) 40 steps at 4.5 (its card).
* Sizes: multiples of the VAE factor x SD3's 2x2 patches (16 for the real models); native side
  sample_size x VAE factor (1024).
* LoRAs: diffusers/PEFT SD3 LoRAs on the transformer (managers.adapters); a LoRA of another base
  is refused there.
* A transformer alone in one file (SAI's sd3.5_*.safetensors, ComfyUI's diffusion_models, GGUF)
  runs with a companion diffusers folder's encoders and VAE (managers.transformer_files).
* Not supported: hires fix, refiners, textual inversions, standalone VAEs, ControlNets: each is a
  validation_error naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import flow_samplers
from ..base import Checked, Defaults, Family, RunPlan, component_config, plain_text_prompts, problem, refused, size_problems
from .presets import PRESETS

if TYPE_CHECKING:
    from ...models.refs import ModelRef
    from ...schemas.generation import GenerationRequest

DEFAULT_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline.__call__'s default
_LARGE = Defaults(steps=28, guidance_scale=3.5)  # [sd35-large-card]
_MEDIUM = Defaults(steps=40, guidance_scale=4.5)  # [sd35-medium-card]
ACCEPTED_SAMPLERS = "euler, flow_match_euler or FlowMatchEulerDiscreteScheduler, with schedule simple or normal (or none)"
_SAMPLERS = (flow_samplers.EULER,)


def vae_scale_factor(ref: ModelRef) -> int:
    blocks = component_config(ref, "vae").get("block_out_channels")
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8


def is_medium(ref: ModelRef) -> bool:
    """SD 3.5 Medium's MMDiT-X: dual-attention layers in its transformer config."""
    return bool(component_config(ref, "transformer").get("dual_attention_layers"))


def size_multiple(ref: ModelRef) -> int:
    patch = component_config(ref, "transformer").get("patch_size", 2)
    return vae_scale_factor(ref) * (patch if isinstance(patch, int) and patch > 0 else 2)


class SD3Family(Family):
    name: ClassVar[str] = "sd3"
    base_models: ClassVar[tuple[str, ...]] = ("sd3",)
    pipelines: ClassVar[dict[str, str]] = {
        "text2img": "StableDiffusion3Pipeline",
        "img2img": "StableDiffusion3Img2ImgPipeline",
        "inpainting": "StableDiffusion3InpaintPipeline",
    }
    model_index_classes: ClassVar[tuple[str, ...]] = tuple(pipelines.values())
    sd_schedulers: ClassVar[bool] = False
    builtin_presets: ClassVar[tuple[dict[str, Any], ...]] = PRESETS
    companion_bases: ClassVar[dict[str, tuple[str, ...]]] = {"sd3": ("sd3",)}
    tiny_arches: ClassVar[dict[str, str]] = {a: "families.sd3.tiny" for a in ("sd3", "sd35-large", "sd35-medium")}

    def defaults(self, base_model: str) -> Defaults:
        return _LARGE

    def with_defaults(self, req: GenerationRequest, base_model: str, medium: bool = False) -> GenerationRequest:
        d = _MEDIUM if medium else _LARGE
        update = {k: v for k, v in (("steps", d.steps), ("guidance_scale", d.guidance_scale)) if k not in req.model_fields_set and getattr(req, k) != v}
        return req.model_copy(update=update) if update else req

    def check(self, req: GenerationRequest, mode: str, ref: ModelRef) -> Checked:
        req = self.with_defaults(req, ref.base_model, is_medium(ref))
        model = f"{ref.model_id} is a {ref.base_model} model"
        if mode not in self.pipelines:
            return Checked(req, [problem("data.model_id", f"{model}, which runs {', '.join(self.pipelines)}, not {mode}")])
        problems = self.refusals(req, ref)
        if problems:
            return Checked(req, problems)
        update, warnings = plain_text_prompts(req, "SD3")
        if req.negative_prompt and req.guidance_scale <= 1.0:
            warnings.append(f"negative_prompt not used: guidance_scale {req.guidance_scale:g} runs no classifier-free guidance")
        return Checked(req.model_copy(update=update) if update else req, [], warnings)

    def refusals(self, req: GenerationRequest, ref: ModelRef) -> list[dict[str, str]]:
        """The request's options SD3 does not take (yet), each a problem at its field."""
        model = f"{ref.model_id} is a {ref.base_model} model"
        out: list[dict[str, str]] = []
        if ref.format != "diffusers":
            out.append(problem("data.model_id", f"{model} in one {ref.format} file; SD3 runs from diffusers folders, or from a transformer file with a folder's encoders and VAE"))
        out += refused(req, ("hires", "textual_inversions", "vae", "controlnets"), f"on SD3 models is not supported yet ({model})")
        if req.refiner is not None:
            out.append(problem("data.refiner", f"a refiner needs an SDXL base model; {model}"))
        if req.prompt_syntax == "compel":
            out.append(problem("data.prompt_syntax", "compel does not support SD3; use a1111 (weights are dropped) or none"))
        if req.true_cfg_scale is not None:
            out.append(problem("data.true_cfg_scale", f"true_cfg_scale is a Flux option; SD3's guidance_scale is classifier-free guidance already ({model})"))
        out.extend(self.scheduler_problems(req))
        out += size_problems(req, size_multiple(ref), ref.model_id, "VAE factor x 2x2 patches")
        return out

    def scheduler_problems(self, req: GenerationRequest) -> list[dict[str, str]]:
        return flow_samplers.problems(req, _SAMPLERS, "SD3", ACCEPTED_SAMPLERS)

    def prompt_kwargs(self, pipe: Any, req: GenerationRequest) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": req.prompt}
        if req.negative_prompt:
            out["negative_prompt"] = req.negative_prompt
        return out

    @staticmethod
    def sequence_length(req: GenerationRequest) -> int:
        return int(req.max_sequence_length) if req.max_sequence_length is not None else DEFAULT_SEQUENCE_LENGTH

    def call_kwargs(self, req: GenerationRequest, plan: RunPlan) -> dict[str, Any]:
        out: dict[str, Any] = {"guidance_scale": req.guidance_scale, "max_sequence_length": self.sequence_length(req)}
        if req.clip_skip is not None:
            out["clip_skip"] = req.clip_skip
        return out

    def fit_size(self, ref: ModelRef, width: int, height: int) -> tuple[int, int]:
        """Sides taken from an init image rounded down to the patch multiple (sides the request sets were checked)."""
        m = size_multiple(ref)
        return max(m, width - width % m), max(m, height - height % m)

    def native_size(self, ref: ModelRef) -> int | None:
        sample = component_config(ref, "transformer").get("sample_size", 128)
        return (sample if isinstance(sample, int) else 128) * vae_scale_factor(ref)

    def effective(self, req: GenerationRequest, plan: RunPlan) -> dict[str, Any]:
        return {"max_sequence_length": self.sequence_length(req)}

    # ---- detection and LoRAs ----
    text_hints: ClassVar[tuple[tuple[int, str, str], ...]] = ((30, r"sd[\s_.-]?3|stable[\s_.-]?diffusion[\s_.-]?3", "sd3"),)
    arch_prefixes: ClassVar[tuple[tuple[str, str], ...]] = (("stable-diffusion-3", "sd3"),)
    folder_class_prefixes: ClassVar[tuple[str, ...]] = ("StableDiffusion3",)
    vae_scaling: ClassVar[dict[float, str]] = {1.5305: "sd3"}
    vae_latent_bases: ClassVar[dict[int, tuple[str, ...]]] = {16: ("sd3",)}  # a VAE file named for SD3
    lora_markers: ClassVar[tuple[str, ...]] = ("joint_blocks_",)
    lora_dit_widths: ClassVar[dict[int, str]] = {1536: "sd3", 2432: "sd3"}  # Medium, Large

    def base_from_version(self, version: str) -> str | None:
        return "sd3" if version.startswith("sd3") else None

    def detect_folder(self, folder: Path, index: dict[str, Any], unet: dict[str, Any]) -> str | None:
        return "sd3"

    def detect_component(self, cls: str, cfg: dict[str, Any]) -> tuple[str, str] | None:
        if cls.startswith("SD3ControlNet"):
            return "controlnet", "sd3"
        return ("unet", "sd3") if cls == "SD3Transformer2DModel" else None

    def lora_base(self, norm_keys: list[str], details: dict[str, Any]) -> str:
        details["family"] = "sd3"
        return "sd3"

    def detect_denoiser(self, unet: Mapping[str, tuple[int, ...]], whole: Mapping[str, tuple[int, ...]]) -> tuple[str, dict[str, Any]] | None:
        """SAI's ``joint_blocks``, or diffusers' ``transformer_blocks`` with joint attention and a ``pos_embed``."""
        import re

        from ...models.shapes import has_prefix

        if has_prefix(unet, "joint_blocks."):
            layout, block = "original", "joint_blocks."
        elif "transformer_blocks.0.attn.add_k_proj.weight" in unet and "pos_embed.proj.weight" in unet:  # joint attention
            layout, block = "diffusers", "transformer_blocks."
        else:
            return None
        index = re.compile(re.escape(block) + r"(\d+)\.")
        depth = 1 + max((int(m.group(1)) for k in unet if (m := index.match(k))), default=-1)
        return "sd3", {"family": "sd3", "layout": layout, "depth": depth}

    def detect_controlnet(self, body: Mapping[str, tuple[int, ...]], details: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        from ...models.shapes import has_prefix

        if has_prefix(body, "pos_embed_input.") or (has_prefix(body, "transformer_blocks.") and "pos_embed.proj.weight" in body):
            return "sd3", {**details, "family": "sd3"}
        return None
