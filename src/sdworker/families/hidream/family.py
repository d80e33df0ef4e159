"""HiDream-I1 (Full, Dev, Fast): text2img through diffusers' HiDreamImagePipeline.

How a request maps onto HiDreamImagePipeline (diffusers 0.42):

* Encoders: four, all fed the same plain-text prompt (diffusers' prompt_2..4 default to
  ``prompt``): two CLIPs (pooled projections, concatenated), T5 (hidden states) and Llama 3.1
  (every layer's hidden states; the transformer's ``llama_layers`` picks one per block). There
  is no A1111 weighting: as on Flux, a weighted prompt is sent as its plain text with a warning
  ("none" sends it as written, "compel" is refused); ``clip_skip`` is refused.
* ``max_sequence_length``: tokens per encoder (CLIP capped at 218 by the pipeline); default 128,
  the pipeline's own.
* Size: the pipeline rescales width x height to the area of its native square
  (128 x VAE factor, 1024 for the real model), keeping the aspect ratio, and floors each side to
  a multiple of twice the VAE factor (:func:`output_size`). The request's size goes to the
  pipeline unchanged, so the pixels equal plain diffusers'; the result's ``parameters`` report the
  size it made (``width``/``height``) and the one asked for (``requested_width``/``_height``).
* Guidance: Full is run with real classifier-free guidance (``guidance_scale`` > 1 uses the
  negative prompt, "" when none); Dev and Fast are guidance-distilled and run with 0. A
  guidance_scale > 1 on them still turns CFG on (as in diffusers), with a warning; a negative
  prompt without CFG is not used (warning).
* Variant (for the defaults: Full 50 steps / 5.0, Dev 28 / 0, Fast 16 / 0, [hidream-repo] in
  store.builtin_presets): the folder name when it says full/dev/fast, else the checkpoint's
  scheduler: UniPC is Full, flow-matching Euler with shift 6 is Dev, with shift 3 Fast.
* Sampler: the two schedulers the checkpoints ship: flow-matching Euler (ComfyUI "euler") and
  UniPC on flow sigmas ("uni_pc"), with the schedule simple or normal. :meth:`scheduler_for`
  builds either from the checkpoint's config, its shift carried over (until the generation
  interface calls it, the checkpoint's own scheduler runs, and naming the other one warns).
  Anything else is a validation_error listing what is accepted.
* inference.batch_process: text2img items share HiDreamImagePipeline calls (prompt lists, one
  generator per image, the scheduler built as above).
* Not supported: img2img/inpainting (diffusers has no HiDream pipelines for them), LoRAs,
  ControlNets, hires fix, refiners, textual inversions, standalone VAEs, and folders without the
  Llama encoder (HiDream-ai's repos leave text_encoder_4/tokenizer_4 out): each a validation_error
  at its field. A transformer alone in one file runs with a HiDream folder's other parts
  (managers.transformer_files).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from .. import flow_samplers
from ..base import Checked, Defaults, Family, RunPlan, plain_text_prompts, problem
from .presets import PRESETS
from ..flux.family import vae_scale_factor

if TYPE_CHECKING:
    from ...models.refs import ModelRef
    from ...schemas.generation import GenerationRequest

#: HiDreamImagePipeline.__call__'s default.
MAX_SEQUENCE_LENGTH = 128
#: HiDreamImagePipeline.default_sample_size: latent pixels per side of the native square.
DEFAULT_SAMPLE_SIZE = 128

VARIANTS: tuple[str, ...] = ("full", "dev", "fast")
_DEFAULTS = {  # [hidream-repo] inference.py MODEL_CONFIGS
    "full": Defaults(steps=50, guidance_scale=5.0),
    "dev": Defaults(steps=28, guidance_scale=0.0),
    "fast": Defaults(steps=16, guidance_scale=0.0),
}
_VARIANT_IN_NAME = re.compile(r"(?<![a-z])(full|dev|fast)(?![a-z])")

EULER, UNIPC = flow_samplers.EULER, flow_samplers.UNIPC
_SAMPLERS = (EULER, UNIPC)
ACCEPTED_SAMPLERS = (
    "euler (flow_match_euler, FlowMatchEulerDiscreteScheduler) or uni_pc (UniPC, UniPCMultistepScheduler), "
    "with schedule simple or normal (or none)"
)


def requested_algorithm(req: "GenerationRequest") -> str:
    """The scheduler class the request names ("" when it names none, or only a schedule)."""
    return flow_samplers.requested(req, _SAMPLERS)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def missing_llama(ref: "ModelRef") -> bool:
    """Whether the folder lacks the Llama encoder: HiDream-ai's own repos leave text_encoder_4/tokenizer_4 out."""
    index = _read_json(ref.path / "model_index.json")
    return any(not isinstance(index.get(c), list) or None in index[c] for c in ("text_encoder_4", "tokenizer_4"))


def scheduler_config(ref: "ModelRef") -> dict[str, Any]:
    return _read_json(ref.path / "scheduler" / "scheduler_config.json")


def shift_of(config: Mapping[str, Any]) -> float | None:
    """The flow shift of a checkpoint's scheduler config (Euler's ``shift``, UniPC's ``flow_shift``)."""
    value = config.get("flow_shift" if config.get("_class_name") == UNIPC else "shift")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def variant(ref: "ModelRef") -> str:
    """full, dev or fast: the folder name when it says so, else the checkpoint's scheduler (module doc)."""
    named = _VARIANT_IN_NAME.search(ref.model_id.lower().replace("_", "-"))
    if named:
        return named.group(1)
    config = scheduler_config(ref)
    if config.get("_class_name") == EULER:
        return "dev" if shift_of(config) == 6.0 else "fast"
    return "full"


def output_size(width: int, height: int, vae_scale_factor: int) -> tuple[int, int]:
    """The size HiDreamImagePipeline makes for `width` x `height`: the same arithmetic as its __call__."""
    division = vae_scale_factor * 2
    s_max = (DEFAULT_SAMPLE_SIZE * vae_scale_factor) ** 2
    scale = math.sqrt(s_max / (width * height))
    return int(width * scale // division * division), int(height * scale // division * division)


def scheduler_from(config: Mapping[str, Any], algorithm: str) -> Any:
    """A fresh `algorithm` scheduler for a HiDream checkpoint whose own scheduler config is `config`.

    The checkpoint's own class is rebuilt from its config; the other one gets the checkpoint's
    shift, as HiDream's repository builds it (Euler: ``shift``; UniPC: flow sigmas, ``flow_shift``).
    """
    import diffusers

    own = config.get("_class_name")
    if algorithm in ("", own):
        return getattr(diffusers, str(own)).from_config(dict(config))
    shift = shift_of(config) or 3.0
    steps = int(config.get("num_train_timesteps", 1000))
    if algorithm == EULER:
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=steps, shift=shift, use_dynamic_shifting=False)
    return diffusers.UniPCMultistepScheduler(
        num_train_timesteps=steps, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )


class HiDreamFamily(Family):
    name: ClassVar[str] = "hidream"
    base_models: ClassVar[tuple[str, ...]] = ("hidream",)
    pipelines: ClassVar[dict[str, str]] = {"text2img": "HiDreamImagePipeline"}
    model_index_classes: ClassVar[tuple[str, ...]] = ("HiDreamImagePipeline",)
    tiny_arches: ClassVar[dict[str, str]] = {a: "families.hidream.tiny" for a in ("hidream", "hidream-full", "hidream-dev", "hidream-fast")}
    builtin_presets: ClassVar[tuple[dict[str, Any], ...]] = PRESETS
    companion_bases: ClassVar[dict[str, tuple[str, ...]]] = {"hidream": ("hidream",)}
    sd_schedulers: ClassVar[bool] = False
    batch_modes: ClassVar[tuple[str, ...]] = ("text2img",)  # HiDreamImagePipeline takes prompt lists and generator lists

    def defaults(self, base_model: str) -> Defaults:
        return _DEFAULTS["full"]  # without a model at hand: the base model's (the quality preset's)

    def check(self, req: "GenerationRequest", mode: str, ref: "ModelRef") -> Checked:
        own = _DEFAULTS[variant(ref)]
        unset = {f: getattr(own, f) for f in ("steps", "guidance_scale") if f not in req.model_fields_set}
        checked = super().check(req.model_copy(update=unset) if unset else req, mode, ref)
        if checked.problems:  # a mode HiDream does not run
            checked.problems[0]["message"] += " (diffusers has no HiDream img2img or inpainting pipeline)"
            return checked
        problems = self.refusals(checked.req, ref)
        if problems:
            return Checked(checked.req, problems)
        return self._as_run(checked.req, ref)

    def refusals(self, req: "GenerationRequest", ref: "ModelRef") -> list[dict[str, str]]:
        """The request's options HiDream does not take, each a problem at its field."""
        from ...prompts.lora_tags import extract_lora_tags

        model = f"{ref.model_id} is a HiDream model"
        if ref.format != "diffusers":
            files = (True, "in one file of this kind; HiDream runs from diffusers folders, or from a transformer .safetensors / .gguf with a folder's other parts")
        else:
            files = (
                missing_llama(ref),
                "its folder has no text_encoder_4/tokenizer_4 (Llama 3.1 8B Instruct, which HiDream-ai's repos leave out); "
                "save the pipeline with them (save_pretrained) and use that folder",
            )
        unsupported = {
            "model_id": files,
            "hires": (req.hires is not None, "hires fix is not supported on it"),
            "controlnets": (bool(req.controlnets), "ControlNets are not supported on it"),
            "loras": (bool(req.loras), "LoRAs are not supported on it"),
            "prompt": (not req.loras and bool(extract_lora_tags(req.prompt)[1]), "<lora:...> tags: LoRAs are not supported on it"),
            "textual_inversions": (bool(req.textual_inversions), "textual inversions are not supported on it"),
            "vae": (req.vae not in (None, "model"), "a standalone VAE is not supported on it"),
            "refiner": (req.refiner is not None, "a refiner needs an SDXL base model"),
            "clip_skip": (req.clip_skip is not None, "it has no clip skip (it reads the CLIPs' pooled projections); leave clip_skip out"),
            "prompt_syntax": (req.prompt_syntax == "compel", "compel does not support it; use a1111 (weights are dropped) or none"),
        }
        out = [problem(f"data.{fld}", f"{model}: {why}") for fld, (used, why) in unsupported.items() if used]
        return out + self.scheduler_problems(req)

    def scheduler_problems(self, req: "GenerationRequest") -> list[dict[str, str]]:
        return flow_samplers.problems(req, _SAMPLERS, "HiDream", ACCEPTED_SAMPLERS)

    def _as_run(self, req: "GenerationRequest", ref: "ModelRef") -> Checked:
        """The request as HiDream runs it (plain-text prompts) and what the host should know about it."""
        update, warnings = plain_text_prompts(req, "HiDream")
        kind = variant(ref)
        if req.guidance_scale > 1.0 and kind != "full":
            warnings.append(
                f"guidance_scale {req.guidance_scale:g} turns on real CFG, but HiDream {kind.capitalize()} is guidance-distilled "
                "(it is run with 0): twice the work per step, usually worse images"
            )
        elif req.guidance_scale <= 1.0 and update.get("negative_prompt", req.negative_prompt):
            warnings.append(f"negative_prompt not used: guidance_scale {req.guidance_scale:g} is no CFG (HiDream uses it above 1)")
        if req.true_cfg_scale is not None:
            warnings.append("true_cfg_scale ignored: it is a Flux option; on HiDream guidance_scale > 1 is real CFG")
        side = self.native_size(ref) or DEFAULT_SAMPLE_SIZE
        asked_size = (req.width or side, req.height or side)
        made = output_size(*asked_size, vae_scale_factor(ref))
        if made != asked_size:
            warnings.append(f"{asked_size[0]}x{asked_size[1]} made as {made[0]}x{made[1]}: HiDream rescales every image to its native area")
        return Checked(req.model_copy(update=update) if update else req, [], warnings)

    def scheduler_for(self, req: "GenerationRequest", config: Mapping[str, Any]) -> Any:
        """The run's fresh scheduler: the algorithm the request names, from the checkpoint's `config`."""
        return scheduler_from(config, requested_algorithm(req))

    @staticmethod
    def sequence_length(req: "GenerationRequest") -> int:
        return int(req.max_sequence_length) if req.max_sequence_length is not None else MAX_SEQUENCE_LENGTH

    def prompt_kwargs(self, pipe: Any, req: "GenerationRequest") -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": req.prompt}
        if req.guidance_scale > 1.0 and req.negative_prompt:
            out["negative_prompt"] = req.negative_prompt
        return out

    def call_kwargs(self, req: "GenerationRequest", plan: RunPlan) -> dict[str, Any]:
        return {"guidance_scale": req.guidance_scale, "max_sequence_length": self.sequence_length(req)}

    def native_size(self, ref: "ModelRef") -> int | None:
        """HiDreamImagePipeline's default: 128 latent pixels x the VAE's scale factor (1024 for HiDream-I1)."""
        return DEFAULT_SAMPLE_SIZE * vae_scale_factor(ref)

    def effective(self, req: "GenerationRequest", plan: RunPlan) -> dict[str, Any]:
        width, height = output_size(plan.width, plan.height, vae_scale_factor(plan.ref))
        out: dict[str, Any] = {
            "width": width,
            "height": height,
            "max_sequence_length": self.sequence_length(req),
            "hidream_variant": variant(plan.ref),
        }
        if (width, height) != (plan.width, plan.height):
            out.update(requested_width=plan.width, requested_height=plan.height)
        shift = shift_of(scheduler_config(plan.ref))
        if shift is not None:
            out["shift"] = shift
        return out

    # ---- detection: Full, Dev and Fast share one shape and one base model ----
    text_hints: ClassVar[tuple[tuple[int, str, str], ...]] = ((10, r"(?<![a-z])hi[\s_.-]?dream", "hidream"),)
    folder_class_prefixes: ClassVar[tuple[str, ...]] = ("HiDreamImage",)

    def detect_folder(self, folder: Path, index: dict[str, Any], unet: dict[str, Any]) -> str | None:
        return "hidream"

    def detect_component(self, cls: str, cfg: dict[str, Any]) -> tuple[str, str] | None:
        return ("unet", "hidream") if cls == "HiDreamImageTransformer2DModel" else None

    def detect_denoiser(self, unet: Mapping[str, tuple[int, ...]], whole: Mapping[str, tuple[int, ...]]) -> tuple[str, dict[str, Any]] | None:
        """The same key names in ComfyUI's files and diffusers' (Full, Dev, Fast alike)."""
        from ...models.shapes import has_prefix

        if "double_stream_blocks.0.block.adaLN_modulation.1.bias" not in unet or not has_prefix(unet, "caption_projection."):
            return None
        blocks = re.compile(r"(double|single)_stream_blocks\.(\d+)\.")
        depth = {"double": 0, "single": 0}
        for k in unet:
            if m := blocks.match(k):
                depth[m.group(1)] = max(depth[m.group(1)], int(m.group(2)) + 1)
        return "hidream", {"family": "hidream", "double_blocks": depth["double"], "single_blocks": depth["single"]}
