"""What a model family is: the few things that differ between Stable Diffusion and Flux generation.

The generation interface plans and runs every family the same way: it resolves the model, checks
the request, assembles the pipeline from model_index.json (managers.pipelines), makes the mode's
pipeline with `from_pipe`, and calls it with one CPU generator per image (contract section 6).
A family says only what differs:

* which base models it serves (contract section 7 ids), which modes it runs and which of them
  inference.batch_process batches (`batch_modes`);
* which request options it takes (`check`: problems, warnings, and the request as it will run,
  its own defaults applied), and which fields its variant keeps from a base model's preset
  (`preset_keeps`);
* how the prompt becomes pipeline arguments (`prompt_kwargs`) and how the guidance and the
  family's other options do (`call_kwargs`);
* its native image side, and whether the scheduler table of managers.schedulers applies to it.

A family holds no state; the registry (families.registry) has one instance of each.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from ..models.refs import ModelRef
    from ..schemas.generation import GenerationRequest


class RunPlan(Protocol):
    """What call_kwargs reads of a generation plan (interfaces.generation.Plan has these)."""

    mode: str
    width: int
    height: int
    ref: ModelRef


@dataclass(frozen=True)
class Defaults:
    """A family's values for the fields a request leaves out (no preset applied)."""

    steps: int
    guidance_scale: float


@dataclass
class Checked:
    """The outcome of Family.check."""

    req: GenerationRequest  # the request as it will run: defaults applied, unusable parts dropped
    problems: list[dict[str, str]] = field(default_factory=list)  # [{path, message}]: a validation_error
    warnings: list[str] = field(default_factory=list)  # what changed or is ignored, for the result's warnings


def component_config(ref: ModelRef, component: str) -> dict[str, Any]:
    """A component's config.json in the model's folder; {} when it is missing or not a JSON object."""
    try:
        cfg = json.loads((ref.path / component / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def problem(path: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message}


def size_problems(req: GenerationRequest, multiple: int, model_id: str, why: str) -> list[dict[str, str]]:
    """A problem at width/height for each side the model cannot take: not a multiple of `multiple` (`why`)."""
    return [
        problem(f"data.{fld}", f"{side} is not a multiple of {multiple}, which {model_id} needs ({why})")
        for fld in ("width", "height")
        if (side := getattr(req, fld)) is not None and side % multiple
    ]


#: The SD-born request options other families refuse: field -> (how a refusal names it, is it used).
_OPTIONS: dict[str, tuple[str, Callable[[GenerationRequest], bool]]] = {
    "hires": ("hires fix", lambda r: r.hires is not None),
    "controlnets": ("ControlNets", lambda r: bool(r.controlnets)),
    "loras": ("LoRAs", lambda r: bool(r.loras)),
    "textual_inversions": ("textual inversions", lambda r: bool(r.textual_inversions)),
    "vae": ("a standalone VAE", lambda r: r.vae not in (None, "model")),
    "refiner": ("a refiner", lambda r: r.refiner is not None),
    "post_processing": ("post_processing", lambda r: bool(r.post_processing)),
    "mask_image": ("a mask_image", lambda r: r.mask_image is not None),
    "true_cfg_scale": ("true_cfg_scale", lambda r: r.true_cfg_scale is not None),
}


def refused(req: GenerationRequest, fields: tuple[str, ...], tail: str, names: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """A problem at each of `fields` the request uses, in that order: "<its name> <tail>"."""
    names = names or {}
    return [problem(f"data.{f}", f"{names.get(f, _OPTIONS[f][0])} {tail}") for f in fields if _OPTIONS[f][1](req)]


def preset_row(
    base_model: str, configuration_type: str, steps: int, cfg_scale: float, sampler: str, scheduler: str,
    model_specific_params: dict[str, Any], source: str,
) -> dict[str, Any]:
    """One built-in preset (Family.builtin_presets): store.builtin_presets.BuiltinPreset's fields."""
    return {
        "base_model": base_model, "configuration_type": configuration_type, "steps": steps, "cfg_scale": cfg_scale,
        "sampler": sampler, "scheduler": scheduler, "model_specific_params": model_specific_params, "source": source,
    }


def step_cache(kind: str, **params: Any) -> dict[str, Any]:
    """A speed preset's `optimize` entry: one step cache (managers.optimize), the rest plain."""
    return {"optimize": {"cache": {"kind": kind, **params}}}


def plain_text_prompts(req: GenerationRequest, family: str) -> tuple[dict[str, Any], list[str]]:
    """For families that take no A1111 weighting (T5/Llama encoders): with prompt_syntax "a1111",
    a prompt with weights, brackets or BREAK is sent as its plain text; the request update and
    a warning for each prompt changed."""
    update: dict[str, Any] = {}
    warnings: list[str] = []
    if req.prompt_syntax != "a1111":
        return update, warnings
    from ..prompts.attention import parse_prompt_attention, plain_text

    for fld in ("prompt", "negative_prompt"):
        text = getattr(req, fld)
        if text and parse_prompt_attention(text) != [(text, 1.0)]:
            update[fld] = plain_text(text)
            warnings.append(f'{fld}: {family} takes no A1111 weighting; sent as plain text {update[fld]!r} (prompt_syntax "none" sends it as written)')
    return update, warnings


class Family:
    """Base of the families; the class attributes are the family's description."""

    name: ClassVar[str]
    base_models: ClassVar[tuple[str, ...]]
    #: mode -> the diffusers pipeline class running it (the model's own class for text2img)
    pipelines: ClassVar[dict[str, str]]
    #: the request's sampler/scheduler go through managers.schedulers (the SD sampler table)
    sd_schedulers: ClassVar[bool] = True
    #: the modes whose inference.batch_process items may share a batched pipeline call (prompt, image
    #: and mask lists, one generator per image); an item in another mode runs there alone, in one call
    #: made as its own request's
    batch_modes: ClassVar[tuple[str, ...]] = ("text2img", "img2img", "inpainting")
    #: an img2img/inpainting pipeline of this family denoises min(int(steps * strength), steps) steps
    #: (diffusers' SD get_timesteps; 0 when steps * strength < 1), not steps - int(steps * (1 - strength))
    truncates_strength: ClassVar[bool] = False
    #: model_index.json `_class_name`s of this family's diffusers folders (the locator asks the registry)
    model_index_classes: ClassVar[tuple[str, ...]] = ()
    #: make_tiny_model arch names -> the module (under sdworker) whose make_tiny(arch, out_dir) writes them
    tiny_arches: ClassVar[dict[str, str]] = {}
    #: built-in quality/speed presets (store.builtin_presets.BuiltinPreset fields), for families that keep their own
    builtin_presets: ClassVar[tuple[dict[str, Any], ...]] = ()

    # ---- detection (models/ asks through families.registry; nothing here imports torch) ----
    #: (rank, regex, base model): file names and titles that name this family's base models; every
    #: family's rules are tried by rank (ties in registry order), the first match wins
    text_hints: ClassVar[tuple[tuple[int, str, str], ...]] = ()
    #: ModelSpec `modelspec.architecture` prefixes -> base model (a longer prefix of a family first)
    arch_prefixes: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: model_index.json `_class_name` prefixes detection reads as this family's (the longest match wins)
    folder_class_prefixes: ClassVar[tuple[str, ...]] = ()
    #: AutoencoderKL scaling factors of this family's reference VAE configs -> base model
    vae_scaling: ClassVar[dict[float, str]] = {}
    #: normalised LoRA key fragments ('.' read as '_') only this family's LoRAs have
    lora_markers: ClassVar[tuple[str, ...]] = ()
    #: a DiT LoRA's joint-attention width -> base model
    lora_dit_widths: ClassVar[dict[int, str]] = {}

    def base_from_version(self, version: str) -> str | None:
        """The base model a kohya `ss_base_model_version` (lowered) names, when it is this family's."""
        return None

    def detect_folder(self, folder: Path, index: dict[str, Any], unet: dict[str, Any]) -> str | None:
        """Detection's base model of a diffusers pipeline folder this family claims by class prefix
        (`unet`: its unet/config.json, {} when absent); None: the default family's rule."""
        return None

    def detect_component(self, cls: str, cfg: dict[str, Any]) -> tuple[str, str] | None:
        """(kind, base model) of a lone component folder whose config.json names `cls`; None: not ours."""
        return None

    def detect_denoiser(self, unet: Mapping[str, tuple[int, ...]], whole: Mapping[str, tuple[int, ...]]) -> tuple[str, dict[str, Any]] | None:
        """(base model, details) of a single file's denoiser when its tensor names (`unet`: the
        keys under a checkpoint's model.diffusion_model., or the bare ones; `whole`: every key) are
        this family's; None: not ours. Other families are asked before the default one."""
        return None

    def detect_controlnet(self, body: Mapping[str, tuple[int, ...]], details: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """(base model, details) of a single-file ControlNet whose tensor names are this family's."""
        return None

    def refine_base(self, kind: str, base: str, metadata: Mapping[str, str], name: str | None) -> str:
        """The base model once names and metadata are read, where tensor shapes cannot tell (Pony over SDXL)."""
        return base

    def refine_folder_base(self, base: str, name: str) -> str:
        """The base model of a diffusers folder once its name is read (a folder has no metadata)."""
        return base

    def lora_base(self, norm_keys: list[str], details: dict[str, Any]) -> str:
        """The base model of a LoRA whose keys carry this family's `lora_markers`."""
        return self.base_models[0]

    def text_encoder_base(self, encoders: frozenset[str]) -> str | None:
        """The base model a lone text-encoder file holding `encoders` (clip_l, open_clip_h, t5xxl, ...)
        belongs to, when only this family's models use exactly those; None: not ours."""
        return None

    def base_from_flags(self, metadata: Mapping[str, str]) -> str | None:
        """The base model a training flag in the metadata names (kohya's ss_v2), once ModelSpec and
        ss_base_model_version have said nothing; None: no flag of ours."""
        return None

    # ---- VAEs and textual inversions ----
    #: a VAE's latent channels -> the base models a VAE file of that width may be named for
    vae_latent_bases: ClassVar[dict[int, tuple[str, ...]]] = {}
    #: base model -> the text-encoder layout of its textual inversions: "single" (one CLIP) or "sdxl"
    #: (clip_l + clip_g); a base not here takes none
    embedding_layouts: ClassVar[dict[str, str]] = {}

    def vae_base(self, base: str) -> str:
        """The base model a standalone VAE named for `base` is filed under (one VAE serves several)."""
        return base

    # ---- single files ----
    #: packaged config sets (sdworker/model_configs/<set>) for this family's original-layout checkpoints
    config_sets: ClassVar[tuple[str, ...]] = ()
    #: a config set's model_index.json `_class_name` -> its checkpoint layout (the set's "family")
    config_set_layouts: ClassVar[dict[str, str]] = {}

    def vae_config_layout(self, base_model: str | None) -> str | None:
        """The config-set layout a standalone single-file VAE detected as `base_model` loads with
        (the default family is asked; a VAE file's shapes cannot tell)."""
        return None

    #: base model -> the pipeline class a whole single-file checkpoint of it runs with (managers.locator)
    single_file_pipelines: ClassVar[dict[str, str]] = {}
    #: base model -> the base models whose diffusers folders may lend a lone transformer file their other
    #: components, best first (managers.transformer_files)
    companion_bases: ClassVar[dict[str, tuple[str, ...]]] = {}

    # ---- adapters and previews ----
    #: base model -> the LoRA group whose LoRAs fit its models (by layer shapes); a base in none is its own
    lora_groups: ClassVar[dict[str, str]] = {}
    #: base model -> the ControlNet group it shares ControlNets with ("SDXL": SDXL and Pony)
    controlnet_groups: ClassVar[dict[str, str]] = {}
    #: a ControlNet config's fields that must equal the denoiser's for its residuals to add up
    controlnet_shape_keys: ClassVar[tuple[str, ...]] = ()

    def controlnet_config_base(self, cfg: Mapping[str, Any]) -> str | None:
        """The base model of a ControlNet folder whose config.json is `cfg`, when its class is this
        family's (the default family reads any other); "sd" may stand for SD 1.x or 2.x."""
        return None

    #: a base model ControlNet detection may give that names no model ("sd": SD 1.x or 2.x) -> its label in
    #: messages and the ControlNet groups it fits
    controlnet_vague_bases: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}

    def controlnet_file_refusal(self, base: str) -> str | None:
        """Why a single-file ControlNet of `base` cannot be loaded (None: it can)."""
        return None

    def controlnet_file_base(self, names: list[str]) -> str | None:
        """The base model of a single-file ControlNet by its tensor names (LDM prefix removed)."""
        return None

    #: what the ControlNets' residuals are added to, in messages
    denoiser_name: ClassVar[str] = "UNet"

    def runs_controlnets_of(self, pipe: Any = None, denoiser: Mapping[str, Any] | None = None) -> bool:
        """Whether a loaded pipeline `pipe`, or a model whose denoiser config is `denoiser`, takes this
        family's ControlNets (families without a claim fall to the default family)."""
        return False

    def controlnet_pipeline(self, pipe: Any, mode: str) -> str | None:
        """The diffusers ControlNet pipeline class running `mode` over `pipe`'s components."""
        return None

    def controlnet_multi(self, nets: list[Any]) -> Any:
        """Several loaded ControlNets as the one model the pipeline takes."""
        raise NotImplementedError

    def latent_rgb(self, base_model: str) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...]] | None:
        """latent channel -> RGB factors and the RGB bias of a step preview (None: no linear map known)."""
        return None

    def folder_base_model(self, folder: Path, index: dict[str, Any]) -> str:
        """The base model of one of this family's diffusers folders (its model_index.json as read)."""
        return self.base_models[0]

    def defaults(self, base_model: str) -> Defaults:
        """Steps and guidance when the request (and its preset) sets none: the schema's defaults."""
        return Defaults(steps=20, guidance_scale=7.0)

    def with_defaults(self, req: GenerationRequest, base_model: str) -> GenerationRequest:
        """`req` with the family's defaults under the fields it did not set (a preset's count as set)."""
        d = self.defaults(base_model)
        update: dict[str, Any] = {}
        if "steps" not in req.model_fields_set and req.steps != d.steps:
            update["steps"] = d.steps
        if "guidance_scale" not in req.model_fields_set and req.guidance_scale != d.guidance_scale:
            update["guidance_scale"] = d.guidance_scale
        return req.model_copy(update=update) if update else req

    def preset_keeps(self, ref: ModelRef) -> tuple[str, ...]:
        """Request fields a preset does not set on this model: presets are made per base model, and a
        variant whose own defaults differ (Flux Fill) keeps them (check applies them); the request's
        own values still win."""
        return ()

    def check(self, req: GenerationRequest, mode: str, ref: ModelRef) -> Checked:
        """The request's problems for this family, its warnings, and the request as it will run."""
        req = self.with_defaults(req, ref.base_model)
        if mode not in self.pipelines:
            runs = ", ".join(self.pipelines)
            return Checked(req, [problem("data.model_id", f"{ref.model_id} is a {ref.base_model} model, which runs {runs}, not {mode}")])
        return Checked(req)

    def prompt_kwargs(self, pipe: Any, req: GenerationRequest) -> dict[str, Any]:
        """The prompt arguments of the pipeline call (text or embeddings)."""
        raise NotImplementedError

    def call_kwargs(self, req: GenerationRequest, plan: RunPlan) -> dict[str, Any]:
        """The family's other arguments of the call: guidance and options (not prompt, not mode inputs)."""
        raise NotImplementedError

    def mode_pipeline(self, pipelines: Any, loaded: Any, mode: str) -> Any:
        """The pipeline running `mode` over a loaded model's components (managers.pipelines' choice)."""
        return pipelines.for_mode(loaded, mode)

    def mode_kwargs(self, plan: RunPlan) -> dict[str, Any]:
        """Arguments a mode needs on this family beyond managers.modes.call_kwargs."""
        return {}

    def scheduler_problems(self, req: GenerationRequest) -> list[dict[str, str]]:
        """For families without the SD sampler table: problems with data.sampler / data.scheduler."""
        return []

    def scheduler_for(self, req: GenerationRequest, config: Any) -> Any | None:
        """The run's fresh scheduler when the family picks it itself (from the checkpoint's scheduler
        `config`); None: the generation interface's choice (the SD sampler table or the model's own)."""
        return None

    def fit_size(self, ref: ModelRef, width: int, height: int) -> tuple[int, int]:
        """The planned output size, fitted to what the model can make (SD: as planned)."""
        return width, height

    def probe_kwargs(self, pipe: Any, width: int, height: int) -> dict[str, Any]:
        """Arguments (besides prompt, steps, generator and output_type) of a check run of a loaded
        model's own pipeline: model.validate_model's smoke step and model.benchmark_model. A
        pipeline that starts from an image (Fill, inpainting, image-to-video) gets a plain one."""
        import inspect

        from PIL import Image

        kwargs: dict[str, Any] = {"width": width, "height": height}
        params = inspect.signature(pipe.__call__).parameters
        name = type(pipe).__name__
        masked = "Fill" in name or "Inpaint" in name
        if (masked or "Img2Img" in name or "ImageToVideo" in name) and "image" in params:
            kwargs["image"] = Image.new("RGB", (width, height), (127, 127, 127))
        if masked and "mask_image" in params:
            kwargs["mask_image"] = Image.new("L", (width, height), 255)
        return kwargs

    def native_size(self, ref: ModelRef) -> int | None:
        """The default side in pixels; None: the generation interface's SD rule (unet x VAE)."""
        return None

    def effective(self, req: GenerationRequest, plan: RunPlan) -> dict[str, Any]:
        """Extra entries of the result's `parameters` (values this family used)."""
        return {}
