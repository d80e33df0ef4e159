"""FLUX.1 (dev, schnell, krea, Fill): text2img, img2img and inpainting through diffusers' Flux pipelines.

How a request maps onto FluxPipeline (diffusers 0.42):

* Prompt: plain text to both encoders (CLIP's pooled output and T5's hidden states; diffusers'
  ``prompt_2`` defaults to ``prompt``). There is no A1111 weighting: with ``prompt_syntax``
  "a1111" a prompt with weights, brackets or BREAK is sent as its plain text (the pieces' text
  joined, prompts.attention.plain_text) and the result warns; "none" sends it as written;
  "compel" is refused. ``clip_skip`` is refused (Flux reads CLIP's pooled output only).
* Guidance: ``guidance_scale`` is the distilled guidance the transformer embeds (dev, krea; the
  presets' ``guidance``), not classifier-free guidance. schnell has no guidance embedder: a
  guidance_scale the request sets is ignored with a warning and reported as 0.
* Negative prompt: real CFG needs a second transformer pass per step, so it is opt-in as in
  diffusers: ``true_cfg_scale`` > 1 together with a negative prompt. A negative prompt without
  it is not used (warning), and so is a true_cfg_scale without a negative prompt.
* ``max_sequence_length``: T5 tokens, at most 512; default 512, schnell 256 (its training
  length; the presets say the same).
* Sampler: only the model's own FlowMatchEulerDiscreteScheduler (ComfyUI "euler" + "simple").
  Any other sampler or schedule is a validation_error listing what is accepted.
* img2img: FluxImg2ImgPipeline sizes its output from width/height (default: its 1024-ish
  native size, not the init image's), so the planned size is passed along.
* inpainting: FluxInpaintPipeline on the regular models (mask white = repaint, ``strength`` as
  in img2img). A FLUX.1 Fill model is told by its transformer, which reads the masked image and
  the mask beside the latents (``in_channels`` = 2 x packed latents + the packed mask: 384 for
  FLUX.1); it runs inpainting only, with FluxFillPipeline and that pipeline's defaults (50 steps,
  guidance 30, strength 1), under a preset too: the flux_dev presets set neither its steps nor
  its guidance (``preset_skipped`` in the result has what they would have set). text2img or
  img2img on a Fill model is a validation_error.
* LoRAs (``loras`` and ``<lora:name:weight>`` tags): diffusers/PEFT and kohya (sd-scripts) Flux
  LoRAs through managers.adapters, as for SD; an SD LoRA on a Flux model is refused by base there.
* ControlNets: FluxControlNetModel folders (several: FluxMultiControlNetModel) through
  managers.controlnet, with conditioning_scale and start/end; not on Fill models.
* True CFG where the mode's pipeline has it: FluxFillPipeline and the ControlNet img2img /
  inpainting pipelines have none, so there a negative prompt is dropped with a warning.
* inference.batch_process: items of every mode share calls of their mode's pipeline (FluxPipeline,
  FluxImg2ImgPipeline, FluxInpaintPipeline, FluxFillPipeline) with prompt, init image and mask
  lists and one generator per image, and this family's arguments. diffusers 0.42 takes such lists
  row by row: the images and masks are preprocessed into one batch, image i is VAE-encoded with
  generator i (``_encode_vae_image``), its noise drawn from generator i (``randn_tensor``) and the
  masked image (inpainting, Fill) encoded with a generator list too; ``prepare_latents`` repeats
  image latents only when there are fewer images than the batch. So image i of a batched call
  starts as a one-image request with its seed does.
* A transformer alone in one file (.safetensors or GGUF) runs with a companion folder's other parts
  (managers.transformer_files).
* Not supported: FLUX.1 Depth/Canny (Control) models, hires fix, refiners,
  textual inversions, standalone VAEs: each is a validation_error naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import flow_samplers
from ..base import Checked, Defaults, Family, RunPlan, component_config, plain_text_prompts, problem, refused, size_problems
from . import knowledge as kn
from .presets import PRESETS

if TYPE_CHECKING:
    from ...models.refs import ModelRef
    from ...schemas.generation import GenerationRequest

#: T5's limit in FluxPipeline.check_inputs.
MAX_SEQUENCE_LENGTH = 512

_DEFAULTS = {
    "flux_schnell": Defaults(steps=4, guidance_scale=0.0),  # [flux-diffusers]
    "flux_krea": Defaults(steps=28, guidance_scale=4.5),  # [krea-card]
}
_DEV = Defaults(steps=28, guidance_scale=3.5)  # FluxPipeline.__call__'s own defaults
_FILL = Defaults(steps=50, guidance_scale=30.0)  # FluxFillPipeline.__call__'s own defaults (and BFL's card)
FILL_STRENGTH = 1.0  # FluxFillPipeline's default: the Fill model repaints the masked area from noise

#: The pipelines without a true-CFG path (no negative_prompt / true_cfg_scale in __call__).
_NO_TRUE_CFG = ("FluxFillPipeline", "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline")
_CONTROLNET_PIPELINES = kn.CONTROLNET_PIPELINES

ACCEPTED_SAMPLERS = "euler, flow_match_euler or FlowMatchEulerDiscreteScheduler, with schedule simple or normal (or none)"
_SAMPLERS = (flow_samplers.EULER,)


def true_cfg_scale(req: GenerationRequest) -> float | None:
    """The true-CFG scale of the call; None when real CFG is off (the negative prompt is unused)."""
    scale = req.true_cfg_scale
    if scale is None or scale <= 1.0 or not req.negative_prompt:
        return None
    return float(scale)


def vae_scale_factor(ref: ModelRef) -> int:
    try:
        factor: int = 2 ** (len(component_config(ref, "vae")["block_out_channels"]) - 1)  # int ** int types as Any
        return factor
    except (KeyError, TypeError):
        return 8  # FLUX.1's VAE


def transformer_variant(ref: ModelRef) -> str:
    """"fill" (FLUX.1 Fill: latents + masked-image latents + mask in), "control" (Depth/Canny:
    latents + control latents in) or "base", from the transformer's input width."""
    if ref.pipeline_class == "FluxFillPipeline":
        return "fill"
    cfg = component_config(ref, "transformer")
    inputs = cfg.get("in_channels")
    if not isinstance(inputs, int):
        return "base"
    packed = 4 * int(component_config(ref, "vae").get("latent_channels", 16) or 16)  # 2x2 packing
    factor = vae_scale_factor(ref)
    if inputs == 2 * packed + 4 * factor * factor:  # the mask: factor x factor pixels per latent, packed 2x2
        return "fill"
    return "control" if inputs > packed else "base"


def pipeline_name(mode: str, variant: str, controlnets: bool) -> str:
    """The diffusers class a Flux request runs with."""
    if variant == "fill":
        return "FluxFillPipeline"
    if controlnets:
        return _CONTROLNET_PIPELINES[mode]
    return FluxFamily.pipelines[mode]


def size_multiple(ref: ModelRef) -> int:
    """Width and height must be multiples of this: the VAE's factor x Flux's 2x2 latent packing."""
    return 2 * vae_scale_factor(ref)


class FluxFamily(Family):
    name: ClassVar[str] = "flux"
    base_models: ClassVar[tuple[str, ...]] = ("flux_dev", "flux_schnell", "flux_krea", "flux")
    pipelines: ClassVar[dict[str, str]] = {"text2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpainting": "FluxInpaintPipeline"}
    #: FLUX.1 Fill is a dev fine-tune: its guidance embedder makes it flux_dev
    model_index_classes: ClassVar[tuple[str, ...]] = (*pipelines.values(), "FluxFillPipeline", "FluxControlNetPipeline")
    tiny_arches: ClassVar[dict[str, str]] = {a: "families.flux.tiny" for a in ("flux", "flux-dev", "flux-schnell", "flux-fill")}
    builtin_presets: ClassVar[tuple[dict[str, Any], ...]] = PRESETS
    #: A dev folder never fits a schnell file (nor the reverse: managers.transformer_files.fits checks
    #: the guidance embedder, and the scheduler's shift differs too); listed so the error can say why.
    companion_bases: ClassVar[dict[str, tuple[str, ...]]] = {
        "flux_dev": ("flux_dev", "flux_krea", "flux", "flux_schnell"),
        "flux_krea": ("flux_krea", "flux_dev", "flux", "flux_schnell"),
        "flux_schnell": ("flux_schnell", "flux", "flux_dev", "flux_krea"),
        "flux": ("flux", "flux_dev", "flux_schnell", "flux_krea"),
    }
    sd_schedulers: ClassVar[bool] = False
    #: every mode, Fill included: the Flux pipelines take prompt, image and mask lists per image (module docstring)
    batch_modes: ClassVar[tuple[str, ...]] = ("text2img", "img2img", "inpainting")

    def defaults(self, base_model: str) -> Defaults:
        return _DEFAULTS.get(base_model, _DEV)

    def folder_base_model(self, folder: Path, index: dict[str, Any]) -> str:
        """dev vs schnell from the transformer's guidance embedder; krea (a dev fine-tune) by name only."""
        from ...models._hints import base_from_text

        try:
            embeds = json.loads((folder / "transformer" / "config.json").read_text()).get("guidance_embeds")
        except (OSError, ValueError, AttributeError):
            embeds = None
        named = base_from_text(folder.name)
        if embeds is False:
            return "flux_schnell"
        if named == "flux_krea":
            return named
        if embeds is True:
            return "flux_dev"
        return named if named in ("flux_dev", "flux_schnell") else "flux"

    def preset_keeps(self, ref: ModelRef) -> tuple[str, ...]:
        """A Fill model's presets are flux_dev's (its base model), made for the base transformer: at
        their guidance 3.5 Fill repaints poorly, so it keeps FluxFillPipeline's steps and guidance
        (the preset's sampler, sequence length and size still apply)."""
        return ("steps", "guidance_scale") if transformer_variant(ref) == "fill" else ()

    @staticmethod
    def sequence_length(req: GenerationRequest, base_model: str) -> int:
        asked = req.max_sequence_length
        if asked is not None:
            return int(asked)
        return 256 if base_model == "flux_schnell" else MAX_SEQUENCE_LENGTH

    def check(self, req: GenerationRequest, mode: str, ref: ModelRef) -> Checked:
        variant = transformer_variant(ref)
        if variant == "fill":
            req = self._fill_defaults(req)
        else:
            req = self.with_defaults(req, ref.base_model)
        model = f"{ref.model_id} is a {ref.base_model} model"
        if variant == "control":
            why = "of the FLUX.1 Control kind (Depth/Canny: its transformer reads a control image's latents); those are not supported"
            return Checked(req, [problem("data.model_id", f"{model} {why}")])
        if variant == "fill" and mode != "inpainting":
            what = "a FLUX.1 Fill model (an inpainting model: its transformer reads the masked image and the mask)"
            return Checked(req, [problem("data.model_id", f"{ref.model_id} is {what}; it runs inpainting only, not {mode}")])
        if mode not in self.pipelines:
            return Checked(req, [problem("data.model_id", f"{model}, which runs {', '.join(self.pipelines)}, not {mode}")])
        problems = self.refusals(req, ref)
        if variant == "fill" and req.controlnets:
            problems.append(problem("data.controlnets", f"ControlNets do not run on FLUX.1 Fill models (diffusers has no Fill ControlNet pipeline); {model}"))
        if problems:
            return Checked(req, problems)
        return self._as_run(req, ref, pipeline_name(mode, variant, bool(req.controlnets)))

    @staticmethod
    def _fill_defaults(req: GenerationRequest) -> GenerationRequest:
        """FluxFillPipeline's own steps, guidance and strength under the fields the request did not set."""
        wanted = {"steps": _FILL.steps, "guidance_scale": _FILL.guidance_scale, "strength": FILL_STRENGTH}
        update = {k: v for k, v in wanted.items() if k not in req.model_fields_set and getattr(req, k) != v}
        return req.model_copy(update=update) if update else req

    def refusals(self, req: GenerationRequest, ref: ModelRef) -> list[dict[str, str]]:
        """The request's options Flux does not take (yet), each a problem at its field."""
        model = f"{ref.model_id} is a {ref.base_model} model"
        out: list[dict[str, str]] = []
        if ref.format != "diffusers":
            out.append(problem("data.model_id", f"{model} in one {ref.format} file; Flux runs from diffusers folders, or from a transformer .safetensors / .gguf with a folder's other parts"))
        out += refused(req, ("hires", "textual_inversions", "vae"), f"on Flux models is not supported yet ({model})")
        if req.refiner is not None:
            out.append(problem("data.refiner", f"a refiner needs an SDXL base model; {model}"))
        if req.clip_skip is not None:
            out.append(problem("data.clip_skip", f"Flux has no clip skip (it reads CLIP's pooled output only); leave clip_skip out ({model})"))
        if req.prompt_syntax == "compel":
            out.append(problem("data.prompt_syntax", "compel does not support Flux; use a1111 (weights are dropped) or none"))
        out.extend(self.scheduler_problems(req))
        out += size_problems(req, size_multiple(ref), ref.model_id, "VAE factor x 2x2 latent packing")
        return out

    @staticmethod
    def _as_run(req: GenerationRequest, ref: ModelRef, pipeline: str) -> Checked:
        """The request as `pipeline` runs it (plain-text prompts, schnell without guidance, true CFG
        only where the pipeline has it) and what that changed."""
        update, warnings = plain_text_prompts(req, "Flux")
        if ref.base_model == "flux_schnell" and req.guidance_scale != 0.0:
            if "guidance_scale" in req.model_fields_set:
                warnings.append(f"guidance_scale {req.guidance_scale:g} ignored: FLUX.1 schnell has no guidance (it runs with 0)")
            update["guidance_scale"] = 0.0
        scale, negative = req.true_cfg_scale, update.get("negative_prompt", req.negative_prompt)
        if pipeline in _NO_TRUE_CFG and (negative or (scale is not None and scale > 1.0)):
            used = [f for f, on in (("negative_prompt", bool(negative)), ("true_cfg_scale", scale is not None and scale > 1.0)) if on]
            warnings.append(f"{' and '.join(used)} not used: diffusers' {pipeline} has no true CFG")
            if scale is not None:
                update["true_cfg_scale"] = None
        elif negative and (scale is None or scale <= 1.0):
            warnings.append("negative_prompt not used: Flux is guidance-distilled; send true_cfg_scale > 1 for real CFG with it (twice the work per step)")
        elif scale is not None and scale > 1.0 and not negative:
            warnings.append("true_cfg_scale ignored: real CFG on Flux needs a negative_prompt")
        return Checked(req.model_copy(update=update) if update else req, [], warnings)

    def scheduler_problems(self, req: GenerationRequest) -> list[dict[str, str]]:
        return flow_samplers.problems(req, _SAMPLERS, "Flux", ACCEPTED_SAMPLERS)

    def prompt_kwargs(self, pipe: Any, req: GenerationRequest) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": req.prompt}
        if true_cfg_scale(req) is not None:
            out["negative_prompt"] = req.negative_prompt
        return out

    def call_kwargs(self, req: GenerationRequest, plan: RunPlan) -> dict[str, Any]:
        out: dict[str, Any] = {"guidance_scale": req.guidance_scale, "max_sequence_length": self.sequence_length(req, plan.ref.base_model)}
        scale = true_cfg_scale(req)
        if scale is not None:
            out["true_cfg_scale"] = scale
        return out

    def mode_pipeline(self, pipelines: Any, loaded: Any, mode: str) -> Any:
        """FluxFillPipeline over a Fill model's components (also one saved as FluxPipeline); else the usual choice."""
        if mode != "inpainting" or transformer_variant(loaded.ref) != "fill":
            return pipelines.for_mode(loaded, mode)
        if type(loaded.pipe).__name__ == "FluxFillPipeline":
            return loaded.pipe
        if mode not in loaded.modes:
            import inspect

            from diffusers import FluxFillPipeline

            # built from the same objects (DiffusionPipeline.from_pipe would cast shared components)
            wanted = [n for n in inspect.signature(FluxFillPipeline.__init__).parameters if n != "self"]
            fill = FluxFillPipeline(**{n: getattr(loaded.pipe, n) for n in wanted})
            fill.set_progress_bar_config(disable=True)
            loaded.modes[mode] = fill
        return loaded.modes[mode]

    def mode_kwargs(self, plan: RunPlan) -> dict[str, Any]:
        # FluxImg2ImgPipeline sizes its output from width/height, not from the init image.
        return {"width": plan.width, "height": plan.height} if plan.mode == "img2img" else {}

    def fit_size(self, ref: ModelRef, width: int, height: int) -> tuple[int, int]:
        """Sides taken from an init image (a multiple of 8) rounded down to the latent packing's multiple:
        FluxFillPipeline cannot pack a mask of any other size (sides the request sets were checked)."""
        m = size_multiple(ref)
        return max(m, width - width % m), max(m, height - height % m)

    def native_size(self, ref: ModelRef) -> int | None:
        """FluxPipeline's default: 128 latent pixels x the VAE's scale factor (1024 for FLUX.1)."""
        return 128 * vae_scale_factor(ref)

    def effective(self, req: GenerationRequest, plan: RunPlan) -> dict[str, Any]:
        out: dict[str, Any] = {"max_sequence_length": self.sequence_length(req, plan.ref.base_model)}
        scale = true_cfg_scale(req)
        out["true_cfg_scale"] = scale if scale is not None else 1.0
        return out

    # ---- detection, LoRAs, ControlNets (families.flux.knowledge) ----
    text_hints: ClassVar[tuple[tuple[int, str, str], ...]] = kn.TEXT_HINTS
    arch_prefixes: ClassVar[tuple[tuple[str, str], ...]] = kn.ARCH_PREFIXES
    folder_class_prefixes: ClassVar[tuple[str, ...]] = ("Flux",)
    vae_scaling: ClassVar[dict[float, str]] = kn.VAE_SCALING
    lora_markers: ClassVar[tuple[str, ...]] = kn.LORA_MARKERS
    lora_dit_widths: ClassVar[dict[int, str]] = kn.LORA_DIT_WIDTHS
    lora_groups: ClassVar[dict[str, str]] = kn.GROUPS  # dev, schnell and Krea share the transformer's layout
    controlnet_groups: ClassVar[dict[str, str]] = kn.GROUPS
    controlnet_shape_keys: ClassVar[tuple[str, ...]] = kn.CONTROLNET_SHAPE_KEYS
    vae_latent_bases: ClassVar[dict[int, tuple[str, ...]]] = kn.VAE_LATENT_BASES

    def vae_base(self, base: str) -> str:
        return "flux"  # one VAE for every Flux variant

    def controlnet_config_base(self, cfg: Mapping[str, Any]) -> str | None:
        return kn.controlnet_config_base(cfg)

    def controlnet_file_refusal(self, base: str) -> str | None:
        return kn.SINGLE_FILE_CONTROLNET if base == "flux" else None

    def base_from_version(self, version: str) -> str | None:
        return "flux" if version.startswith("flux") else None

    def detect_folder(self, folder: Path, index: dict[str, Any], unet: dict[str, Any]) -> str | None:
        return kn.detect_folder(folder, index)

    def detect_component(self, cls: str, cfg: dict[str, Any]) -> tuple[str, str] | None:
        return kn.detect_component(cls, cfg)

    def refine_base(self, kind: str, base: str, metadata: Mapping[str, str], name: str | None) -> str:
        """dev / schnell / krea from metadata, then (checkpoints and transformers) the file name."""
        from ...models._hints import base_from_metadata, base_from_text

        declared = base_from_metadata(metadata) or ""
        named = base_from_text(name) if kind in ("checkpoint", "unet") else None
        for hint in (declared, named):
            variant = kn.named_variant(base, hint)
            if variant is not None:
                return variant
        return base

    def refine_folder_base(self, base: str, name: str) -> str:
        from ...models._hints import base_from_text

        return kn.named_variant(base, base_from_text(name)) or base

    def lora_base(self, norm_keys: list[str], details: dict[str, Any]) -> str:
        return kn.lora_base(norm_keys, details)

    denoiser_name: ClassVar[str] = "transformer"

    def runs_controlnets_of(self, pipe: Any = None, denoiser: Mapping[str, Any] | None = None) -> bool:
        if pipe is not None:
            return type(pipe).__name__.startswith("Flux")
        return denoiser is not None and "joint_attention_dim" in denoiser

    def controlnet_pipeline(self, pipe: Any, mode: str) -> str | None:
        return kn.CONTROLNET_PIPELINES.get(mode)

    def controlnet_multi(self, nets: list[Any]) -> Any:
        from diffusers.models.controlnets import FluxMultiControlNetModel

        return FluxMultiControlNetModel(nets)

    def detect_denoiser(self, unet: Mapping[str, tuple[int, ...]], whole: Mapping[str, tuple[int, ...]]) -> tuple[str, dict[str, Any]] | None:
        return kn.detect_denoiser(unet)

    def detect_controlnet(self, body: Mapping[str, tuple[int, ...]], details: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        return kn.detect_controlnet(body, details)
