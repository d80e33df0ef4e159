"""Wan 2.1 and 2.2 (text-to-video, image-to-video): how a video request maps onto diffusers' Wan pipelines.

How a request maps onto WanPipeline / WanImageToVideoPipeline (diffusers 0.42):

* Modes: ``text2video`` runs a text-to-video model (WanPipeline); ``img2video`` runs an
  image-to-video model (WanImageToVideoPipeline), or a Wan 2.2 TI2V model (``expand_timesteps``:
  one transformer does both, so WanImageToVideoPipeline is made over its components). A
  text-to-video model cannot animate an image (its transformer has no image-condition channels)
  and an image-to-video model needs one: both are validation errors naming the model.
* Sizes: width and height are multiples of the VAE's spatial factor x the transformer's patch
  (16 on every Wan model; read from the configs); num_frames is of the form 4k+1 (the VAE's
  temporal factor). diffusers silently rounds both; the worker refuses them instead.
* Guidance: ``guidance_scale`` is real CFG with the negative prompt (UMT5 encodes both). Wan 2.2
  A14B has two experts: ``transformer`` denoises the high-noise steps, ``transformer_2`` the rest,
  switching at ``boundary_ratio`` x 1000 (from model_index.json); ``guidance_scale_2`` is the
  low-noise expert's guidance (default: guidance_scale, as in diffusers). On a model with one
  expert guidance_scale_2 is a validation error.
* Prompt: plain text (UMT5, up to ``max_sequence_length`` tokens, default 512). A1111 weights are
  dropped with a warning, as for Flux; compel is refused.
* Sampler: the model's own scheduler (UniPC in flow mode on the released models), or ``euler``
  (FlowMatchEulerDiscreteScheduler) / ``uni_pc``, both with the model's flow shift; the schedule
  may be simple / normal. Anything else is a validation error listing these.
* Not supported on Wan: LoRAs, ControlNets, hires fix, refiners, textual inversions, standalone
  VAEs, clip skip, post-processing: each a validation error at its field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import flow_samplers
from ..base import Checked, Defaults, Family, RunPlan, plain_text_prompts, problem, refused, size_problems
from .presets import PRESETS

if TYPE_CHECKING:
    from ...models.refs import ModelRef
    from ...schemas.generation import GenerationRequest

#: UMT5's limit in WanPipeline (its default max_sequence_length).
MAX_SEQUENCE_LENGTH = 512
#: The released models' defaults: 81 frames at 16 fps, 832x480 (diffusers' WanPipeline defaults).
DEFAULT_FRAMES = 81
DEFAULT_FPS = 16
DEFAULT_WIDTH, DEFAULT_HEIGHT = 832, 480

_DEFAULTS = {
    "wan_2_1": Defaults(steps=50, guidance_scale=5.0),  # WanPipeline.__call__'s defaults [wan21-diffusers]
    "wan_2_2": Defaults(steps=40, guidance_scale=4.0),  # [wan22-repo]: high-noise expert 4.0, low-noise 3.0
}

VIDEO_MODES = ("text2video", "img2video")

ACCEPTED_SAMPLERS = "uni_pc (UniPCMultistepScheduler) or euler (FlowMatchEulerDiscreteScheduler), with schedule simple or normal (or none)"
_CLASSES = (flow_samplers.UNIPC, flow_samplers.EULER)


@dataclass(frozen=True)
class WanSampler:
    """A sampler a Wan request may name; built with the model's flow shift (build_scheduler)."""

    id: str  # "uni_pc" or "euler"
    class_name: str
    display_name: str


SAMPLERS = {
    "uni_pc": WanSampler("uni_pc", "UniPCMultistepScheduler", "UniPC"),
    "euler": WanSampler("euler", "FlowMatchEulerDiscreteScheduler", "Euler"),
}


def sampler_choice(req: GenerationRequest) -> WanSampler | None:
    """The sampler the request names (None: the model's own scheduler). Names are checked by scheduler_problems."""
    cls = flow_samplers.requested(req, _CLASSES)
    return next((s for s in SAMPLERS.values() if s.class_name == cls), None) if cls else None


def model_shift(model_config: dict[str, Any]) -> float:
    """The flow shift in a scheduler config (UniPC: flow_shift, FlowMatchEuler: shift)."""
    return float(model_config.get("flow_shift", model_config.get("shift", 1.0)) or 1.0)


def build_scheduler(choice: WanSampler | None, model_class: type[Any], model_config: dict[str, Any], shift: float | None = None) -> Any:
    """A fresh scheduler for one run: the model's own, or the chosen one; with `shift`, or the model's flow shift."""
    import diffusers

    if choice is None or choice.class_name == model_class.__name__:
        if shift is None:
            return model_class.from_config(model_config)
        key = "flow_shift" if "flow_shift" in model_config or "use_flow_sigmas" in model_config else "shift"
        return model_class.from_config({**model_config, key: shift})
    shift = model_shift(model_config) if shift is None else shift
    steps = int(model_config.get("num_train_timesteps", 1000))
    if choice.id == "euler":
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=steps, shift=shift)
    return diffusers.UniPCMultistepScheduler(
        num_train_timesteps=steps, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )


# ---- what a model folder says ------------------------------------------------------------------------


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _present(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and value[0] is not None


@dataclass(frozen=True)
class WanModel:
    """What the checks need to know of a Wan model, read from its configs (no weights)."""

    pipeline_class: str
    two_experts: bool  # transformer_2 + boundary_ratio: Wan 2.2 A14B
    boundary_ratio: float | None
    expand_timesteps: bool  # Wan 2.2 TI2V-5B: one model for text and image to video
    image_encoder: bool  # Wan 2.1 I2V: CLIP vision hidden states into the transformer
    spatial: int  # VAE spatial factor
    temporal: int  # VAE temporal factor
    patch: tuple[int, int, int]

    @property
    def image_to_video(self) -> bool:
        return self.pipeline_class == "WanImageToVideoPipeline"

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: VAE factor x patch; WanPipeline also wants 16."""
        return math.lcm(self.spatial * max(self.patch[1], self.patch[2]), 16)

    def modes(self) -> tuple[str, ...]:
        if self.expand_timesteps:
            return VIDEO_MODES
        return ("img2video",) if self.image_to_video else ("text2video",)


def read_model(ref: ModelRef) -> WanModel:
    folder = ref.path
    index = _json(folder / "model_index.json")
    vae = _json(folder / "vae" / "config.json")
    tf = _json(folder / "transformer" / "config.json") or _json(folder / "transformer_2" / "config.json")
    patch = tf.get("patch_size") or (1, 2, 2)
    ratio = index.get("boundary_ratio")
    return WanModel(
        pipeline_class=str(index.get("_class_name") or ref.pipeline_class),
        two_experts=_present(index.get("transformer_2")) and ratio is not None,
        boundary_ratio=float(ratio) if isinstance(ratio, (int, float)) else None,
        expand_timesteps=bool(index.get("expand_timesteps")),
        image_encoder=_present(index.get("image_encoder")),
        spatial=int(vae.get("scale_factor_spatial") or 8),
        temporal=int(vae.get("scale_factor_temporal") or 4),
        patch=(int(patch[0]), int(patch[1]), int(patch[2])),
    )


def wan_base(index: dict[str, Any], name: str = "") -> str:
    """wan_2_2 when the model has Wan 2.2's marks (two experts, boundary_ratio, TI2V's expand_timesteps), else wan_2_1."""
    import re

    if _present(index.get("transformer_2")) or index.get("boundary_ratio") is not None or index.get("expand_timesteps"):
        return "wan_2_2"
    if re.search(r"wan[\s_.-]?2[._]?2", name.lower()):
        return "wan_2_2"
    return "wan_2_1"


# ---- the family ------------------------------------------------------------------------------------------


def _frames(req: GenerationRequest) -> int:
    value = getattr(req, "num_frames", None)
    return int(value) if value is not None else DEFAULT_FRAMES


class WanFamily(Family):
    name: ClassVar[str] = "wan"
    base_models: ClassVar[tuple[str, ...]] = ("wan_2_1", "wan_2_2")
    pipelines: ClassVar[dict[str, str]] = {"text2video": "WanPipeline", "img2video": "WanImageToVideoPipeline"}
    model_index_classes: ClassVar[tuple[str, ...]] = ("WanPipeline", "WanImageToVideoPipeline")
    tiny_arches: ClassVar[dict[str, str]] = {a: "families.wan.tiny" for a in ("wan21", "wan21-i2v", "wan22", "wan22-i2v", "wan22-ti2v")}
    builtin_presets: ClassVar[tuple[dict[str, Any], ...]] = PRESETS
    companion_bases: ClassVar[dict[str, tuple[str, ...]]] = {"wan_2_1": ("wan_2_1",), "wan_2_2": ("wan_2_2",)}

    def folder_base_model(self, folder: Path, index: dict[str, Any]) -> str:
        return wan_base(index, folder.name)
    sd_schedulers: ClassVar[bool] = False
    batch_modes: ClassVar[tuple[str, ...]] = ()  # video: not part of inference.batch_process

    def defaults(self, base_model: str) -> Defaults:
        return _DEFAULTS.get(base_model, _DEFAULTS["wan_2_1"])

    def check(self, req: GenerationRequest, mode: str, ref: ModelRef) -> Checked:
        checked = super().check(req, mode, ref)
        if checked.problems:  # an image mode on a video model
            checked.problems[0]["message"] += "; send it to inference.text2video or inference.img2video"
            return checked
        req = checked.req
        model = read_model(ref)
        about = f"{ref.model_id} is a {ref.base_model} {'image' if model.image_to_video else 'text'}-to-video model"
        out: list[dict[str, str]] = []
        if mode not in model.modes():
            if mode == "img2video":
                out.append(problem("data.model_id", f"{about}; img2video needs an image-to-video model (Wan I2V or TI2V)"))
            else:
                out.append(problem("data.model_id", f"{about}; it needs an init image: use inference.img2video"))
        if mode == "img2video" and not req.init_image:
            out.append(problem("data.init_image", "img2video needs an init_image (alias image): the first frame"))
        if mode == "text2video" and req.init_image:
            out.append(problem("data.init_image", "text2video takes no init_image; send it to inference.img2video"))
        if ref.format != "diffusers":
            out.append(problem("data.model_id", f"{about} in one file of this kind; Wan runs from diffusers folders, or from a transformer .safetensors / .gguf with a folder's other parts"))
        out.extend(self._video_problems(req, ref, model))
        out.extend(self.refusals(req, ref))
        if out:
            return Checked(req, out)
        return self._as_run(req, model)

    @staticmethod
    def _video_problems(req: GenerationRequest, ref: ModelRef, model: WanModel) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        frames = _frames(req)
        if (frames - 1) % model.temporal:
            below = (frames - 1) // model.temporal * model.temporal + 1
            out.append(problem(
                "data.num_frames",
                f"{frames} is not of the form {model.temporal}k+1, which {ref.model_id} needs (its VAE compresses time {model.temporal}x); "
                f"try {below} or {below + model.temporal}",
            ))
        out += size_problems(req, model.size_multiple, ref.model_id, "VAE factor x patch size")
        if getattr(req, "guidance_scale_2", None) is not None and not model.two_experts:
            out.append(problem(
                "data.guidance_scale_2",
                f"{ref.model_id} has one expert (no transformer_2 / boundary_ratio); guidance_scale_2 is for Wan 2.2's two-expert models",
            ))
        return out

    def refusals(self, req: GenerationRequest, ref: ModelRef) -> list[dict[str, str]]:
        """The request's image-only options, each a problem at its field."""
        from ...prompts.lora_tags import extract_lora_tags

        model = f"{ref.model_id} is a {ref.base_model} model"
        image_only = ("hires", "controlnets", "loras", "textual_inversions", "vae", "refiner", "post_processing", "mask_image", "true_cfg_scale")
        names = {"true_cfg_scale": "true_cfg_scale (guidance_scale is already real CFG)"}
        out = refused(req, image_only, f"on Wan video models is not supported ({model})", names)
        if not req.loras and extract_lora_tags(req.prompt)[1]:
            out.append(problem("data.prompt", f"<lora:...> tags: LoRAs on Wan video models are not supported ({model})"))
        if req.clip_skip is not None:
            out.append(problem("data.clip_skip", f"Wan encodes prompts with UMT5; clip_skip does not apply ({model})"))
        if req.prompt_syntax == "compel":
            out.append(problem("data.prompt_syntax", "compel does not support Wan; use a1111 (weights are dropped) or none"))
        out.extend(self.scheduler_problems(req))
        return out

    @staticmethod
    def _as_run(req: GenerationRequest, model: WanModel) -> Checked:
        """The request as Wan runs it (plain-text prompts) and what that changed."""
        update, warnings = plain_text_prompts(req, "Wan")
        if req.negative_prompt and req.guidance_scale <= 1.0:
            warnings.append("negative_prompt not used: guidance_scale <= 1 turns classifier-free guidance off")
        return Checked(req.model_copy(update=update) if update else req, [], warnings)

    def scheduler_problems(self, req: GenerationRequest) -> list[dict[str, str]]:
        return flow_samplers.problems(req, _CLASSES, "Wan", ACCEPTED_SAMPLERS)

    @staticmethod
    def sequence_length(req: GenerationRequest) -> int:
        return int(req.max_sequence_length) if req.max_sequence_length is not None else MAX_SEQUENCE_LENGTH

    def prompt_kwargs(self, pipe: Any, req: GenerationRequest) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": req.prompt}
        if req.negative_prompt:
            out["negative_prompt"] = req.negative_prompt
        return out

    def call_kwargs(self, req: GenerationRequest, plan: RunPlan) -> dict[str, Any]:
        out: dict[str, Any] = {
            "guidance_scale": req.guidance_scale,
            "num_frames": _frames(req),
            "max_sequence_length": self.sequence_length(req),
        }
        scale_2 = getattr(req, "guidance_scale_2", None)
        if scale_2 is not None:
            out["guidance_scale_2"] = scale_2
        return out

    def mode_kwargs(self, plan: RunPlan) -> dict[str, Any]:
        return {"width": plan.width, "height": plan.height}

    def probe_kwargs(self, pipe: Any, width: int, height: int) -> dict[str, Any]:
        # the fewest frames a Wan VAE takes (4k+1); sizes on the 16-pixel grid
        def side(v: int) -> int:
            return max(16, v // 16 * 16)

        return {**super().probe_kwargs(pipe, side(width), side(height)), "num_frames": 5}

    def native_size(self, ref: ModelRef) -> int | None:
        return None  # videos are not square: the video interface uses DEFAULT_WIDTH x DEFAULT_HEIGHT

    def effective(self, req: GenerationRequest, plan: RunPlan) -> dict[str, Any]:
        model = read_model(plan.ref)
        out: dict[str, Any] = {"max_sequence_length": self.sequence_length(req), "num_frames": _frames(req)}
        if model.two_experts:
            scale_2 = getattr(req, "guidance_scale_2", None)
            out["guidance_scale_2"] = scale_2 if scale_2 is not None else req.guidance_scale
            out["boundary_ratio"] = model.boundary_ratio
        return out

    # ---- detection ----
    folder_class_prefixes: ClassVar[tuple[str, ...]] = ("Wan",)

    def detect_folder(self, folder: Path, index: dict[str, Any], unet: dict[str, Any]) -> str | None:
        return wan_base(index, folder.name)

    def refine_base(self, kind: str, base: str, metadata: Mapping[str, str], name: str | None) -> str:
        """The A14B experts have Wan 2.1's shapes; only 2.2 splits the schedule into high/low-noise experts."""
        import re

        if base == "wan_2_1" and name and re.search(r"wan[\s_.-]?2[._]?2|(high|low)[\s_-]?noise", name.lower()):
            return "wan_2_2"
        return base

    def detect_denoiser(self, unet: Mapping[str, tuple[int, ...]], whole: Mapping[str, tuple[int, ...]]) -> tuple[str, dict[str, Any]] | None:
        """A 3D ``patch_embedding`` and ``blocks.N`` (original: ``self_attn``, diffusers: ``attn1``). 48
        input channels is Wan 2.2 TI2V-5B; otherwise 2.1 and 2.2's A14B experts share shapes, so the
        base is wan_2_1 unless the file name says 2.2 (refine_base)."""
        from ...models.shapes import has_prefix

        patch = unet.get("patch_embedding.weight")
        if patch is None or len(patch) != 5 or not has_prefix(unet, "blocks.0.self_attn.", "blocks.0.attn1."):
            return None
        details: dict[str, Any] = {"family": "wan", "layout": "original" if has_prefix(unet, "blocks.0.self_attn.") else "diffusers",
                                   "in_channels": patch[1], "image_to_video": patch[1] == 36}
        return ("wan_2_2" if patch[1] == 48 else "wan_2_1"), details
