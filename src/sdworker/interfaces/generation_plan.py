"""Planning a generation request: every check and everything resolvable before the job is queued.

GenerationInterface.plan (this module's GenerationPlanning) turns a request into a Plan: preset
applied, limits and the model's family checked, sizes, scheduler, LoRAs, embeddings, VAE,
refiner, hires and ControlNets resolved, seed drawn and output paths reserved. A bad request is a
validation error here, before anything loads.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelNotFound, ValidationFailed, WorkerError
from ..families import Family, for_base_model, supported_base_models
from ..families.sd import SDFamily
from ..managers import hires, modes, precision, schedulers
from ..managers.adapters import AdapterManager, PlannedLoRA
from ..managers.controlnet import ControlSpec, plan_controlnets, unet_config
from ..managers.embeddings import (
    Triggered,
    find_triggered,
    rewrite,
    select,
    triggers_of,
)
from ..managers.locator import ModelLocator, ModelRef, pickle_refused
from ..managers.output import OutputWriter
from ..managers.runtime import Runtime
from ..prompts.lora_tags import extract_lora_tags
from ..schemas.generation import GenerationRequest
from ..settings import Settings

if TYPE_CHECKING:
    from ..managers.catalog import CatalogItem
    from ..store.presets import PresetStore

SDXL_BASES = ("sdxl", "pony")


def _invalid(path: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{path}: {message}", [{"path": path, "message": message}])


@dataclass
class Plan:
    """A validated request with everything resolved that can be resolved before loading."""

    req: GenerationRequest
    mode: str
    ref: ModelRef
    device: str
    width: int
    height: int
    seed: int
    paths: list[Path | None]
    preset: dict[str, Any] | None = None  # preset, preset_origin, ... for the result's parameters
    scheduler: schedulers.SchedulerChoice | None = None  # None: the model's own scheduler
    inputs: modes.ModeInputs | None = None
    vae: CatalogItem | None = None  # a standalone VAE the request names
    refiner: ModelRef | None = None
    hires: hires.HiresPlan | None = None
    dtype: str | None = None  # None: the worker's dtype
    exclusive: bool = False  # the save paths must still be free when written
    warnings: list[str] = field(default_factory=list)
    controlnets: list[ControlSpec] = field(default_factory=list)  # checked, control images ready
    loras: list[PlannedLoRA] = field(default_factory=list)  # data.loras + the prompt's <lora:...> tags
    embeddings: list[Triggered] = field(default_factory=list)  # textual inversions the prompts trigger
    prompt_as_sent: str | None = None  # the user's prompt (LoRA tags, TI words); req.prompt is the encoders' copy
    negative_as_sent: str | None = None  # the user's negative prompt (TI words), without the LoRA tags it cannot use
    family: Family = field(default_factory=SDFamily)  # [families] what differs per model family (families/)

    @property
    def single_run_only(self) -> list[str]:
        """Request fields only GenerationInterface.run carries out (a batched call would ignore them)."""
        req = self.req
        used = {"vae": self.vae is not None, "refiner": self.refiner is not None, "hires": self.hires is not None}
        used["precision"] = req.precision != type(req.precision)()
        used["controlnets"] = bool(self.controlnets)
        return [name for name, on in used.items() if on]



def native_size(ref: ModelRef) -> int:
    """The model's default side: unet sample_size x VAE scale factor, read from the configs."""
    try:
        unet = json.loads((ref.path / "unet" / "config.json").read_text())
        vae = json.loads((ref.path / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 1024 if ref.base_model.startswith("sdxl") else 512


# request fields whose worker default (a flag) the host sets: a preset does not override them
WORKER_DEFAULTED = ("optimize",)


def worker_keeps(settings: Settings) -> tuple[str, ...]:
    """Request fields a preset leaves alone because the host set the worker's default (--optimize)."""
    return tuple(f for f in WORKER_DEFAULTED if getattr(settings, f, None))


def limit_problems(req: Any, settings: Settings) -> list[dict[str, str]]:
    """The worker's limits a generation request (image or video) passes over: size, count, steps."""
    problems: list[dict[str, str]] = []
    for fld in ("width", "height"):
        v = getattr(req, fld)
        if v is not None and v > settings.max_resolution:
            problems.append({"path": f"data.{fld}", "message": f"{v} is over the limit of {settings.max_resolution}"})
    if req.num_images > settings.max_batch_size:
        problems.append({"path": "data.num_images", "message": f"{req.num_images} is over the limit of {settings.max_batch_size}"})
    if req.steps > settings.max_steps:
        problems.append({"path": "data.steps", "message": f"{req.steps} is over the limit of {settings.max_steps}"})
    return problems


def blame_preset(problems: list[dict[str, str]], req: Any, preset: dict[str, Any] | None) -> list[dict[str, str]]:
    """Say where a value the request did not send came from: the preset that filled it in."""
    if preset is not None:
        for problem in problems:
            if problem["path"].removeprefix("data.") in preset["preset_applied"]:
                problem["message"] += f" (from the {req.preset} preset {preset['preset_id']})"
    return problems


def kept_from_preset(req: Any, preset: dict[str, Any] | None, model_id: str) -> list[str]:
    """A warning when the model kept its own value where its preset says another (Family.preset_keeps)."""
    # a worker default the host set (worker_keeps) is its own choice: preset_skipped shows it, no warning
    skipped = {k: v for k, v in (preset or {}).get("preset_skipped", {}).items() if k not in WORKER_DEFAULTED and v != getattr(req, k)}
    if preset is None or not skipped:
        return []
    said = ", ".join(f"{k} {v:g}" for k, v in skipped.items())
    own = ", ".join(f"{k} {getattr(req, k):g}" for k in skipped)
    return [f"the {preset['preset']} preset of {preset['preset_base_model']} sets {said}; {model_id} keeps its own {own} (send {' / '.join(skipped)} to set them)"]


class GenerationPlanning:
    """GenerationInterface's planning half (runs inline, before queueing)."""

    settings: Settings
    presets: PresetStore | None
    runtime: Runtime
    locator: ModelLocator
    output: OutputWriter
    upscalers: Any

    def plan(self, req: GenerationRequest, mode: str, session_id: str) -> Plan:
        s = self.settings
        ref: ModelRef | None = None
        preset: dict[str, Any] | None = None
        if req.preset is not None and self.presets is not None:
            # The preset's values go under the fields the request set itself (model_fields_set);
            # the checks below then see the effective request. Its sampler + schedule apply only
            # when the request names neither a sampler nor a scheduler of its own. [families] A variant
            # keeps its own defaults where its base model's preset does not fit it (Flux Fill: steps, guidance).
            ref = self.locator.resolve(req.model_id or s.default_model)
            fam = for_base_model(ref.base_model)
            keep = (*(fam.preset_keeps(ref) if fam is not None else ()), *worker_keeps(s))
            req, preset = self.presets.for_request(req, ref, keep)  # type: ignore[assignment]
            if req.scheduler is None and req.sampler is None and preset.get("preset_sampler"):
                req = req.model_copy(update={"sampler": preset["preset_sampler"], "scheduler": preset.get("preset_scheduler")})
        problems = limit_problems(req, s)
        choice = None
        # [families] a family without the SD sampler table (Flux: flow matching only) checks the names itself
        peek = ref or self._peek_ref(req)
        peek_family = for_base_model(peek.base_model) if peek is not None else None
        if peek_family is not None and not peek_family.sd_schedulers:
            problems.extend(peek_family.scheduler_problems(req))
        else:
            try:
                choice = schedulers.resolve(req.scheduler, req.sampler)
            except ValidationFailed as exc:
                problems.extend(exc.details)
        if req.prompt_syntax == "compel":
            from ..prompts.compel_syntax import compel_unavailable

            why = compel_unavailable(not self.runtime.ready, lambda: self.runtime.wait(300.0))  # compel imports torch too
            if why:
                problems.append({"path": "data.prompt_syntax", "message": why})
        if problems:
            blame_preset(problems, req, preset)
            raise ValidationFailed(f"{problems[0]['path']}: {problems[0]['message']}", problems)
        ref = ref or peek or self.locator.resolve(req.model_id or s.default_model)
        # [families] the model's family checks the request (SD: nothing more; Flux: refuses SD-only options)
        family = for_base_model(ref.base_model)
        if family is None:
            raise ValidationFailed(
                f"model {ref.model_id!r} is a {ref.base_model} model ({ref.pipeline_class}); {mode} supports {', '.join(supported_base_models())}",
                [{"path": "data.model_id", "message": "unsupported architecture"}],
            )
        checked = family.check(req, mode, ref)
        if checked.problems:
            raise ValidationFailed(f"{checked.problems[0]['path']}: {checked.problems[0]['message']}", checked.problems)
        req = checked.req
        device = self.runtime.check_device(req.device_id)
        roots = [r for r in (s.output_dir, *s.input_dirs) if r is not None]
        inputs, width, height = modes.prepare(mode, req.init_image, req.mask_image, req.width, req.height, roots)
        zero = modes.strength_problems(mode, req.steps, req.strength, family.name)  # no denoising step: refused now, not in the job
        if zero:
            raise ValidationFailed(f"{zero[0]['path']}: {zero[0]['message']}", zero)
        side = family.native_size(ref) or native_size(ref)
        width, height = width or side, height or side
        width, height = family.fit_size(ref, width, height)  # [families] Flux: sides from an init image fit its latent packing
        dtype = None if req.precision.dtype == "auto" else req.precision.dtype
        precision.check(req.precision, self._known_device(device), dtype or self.runtime.dtype_name, [], ref.weights_format)
        warnings: list[str] = list(checked.warnings)
        warnings.extend(kept_from_preset(req, preset, ref.model_id))
        sent = req.prompt
        req, loras = self._plan_loras(req, ref, warnings)
        sent_negative = req.negative_prompt  # LoRA tags cut out (not applied, with a warning), TI words as written
        req, embeds = self._plan_embeddings(req, ref, warnings)
        if req.prompt_syntax == "compel":  # what compel rejects: validation_error before loading
            from ..prompts.compel_syntax import check_compel

            check_compel(req.prompt, req.negative_prompt, req.clip_skip, ref.base_model in ("sdxl", "pony"))
        vae = self._plan_vae(req, ref, warnings)
        refiner = self._plan_refiner(req, mode, ref)
        hp = hires.checked_plan(req, mode, width, height, self.settings.max_resolution, self.settings.max_steps)
        if req.post_processing:
            from .. import limits
            from ..managers.upscale import check_post_processing

            final = (hp.width, hp.height) if hp is not None and hasattr(hp, "width") else (width, height)
            check_post_processing(req.post_processing, self.upscalers, "data.post_processing", limits.current().max_image_pixels, final)
        cns = self._plan_controlnets(req, mode, ref, width, height, roots)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        paths = self.output.plan(req.output.save_path, session_id, req.num_images, req.output.format, req.output.overwrite)
        exclusive = req.output.save_path is not None and not req.output.overwrite
        return Plan(
            req, mode, ref, device, width, height, seed, paths, preset, choice, inputs, vae, refiner, hp, dtype, exclusive, warnings,
            controlnets=cns, loras=loras, embeddings=embeds, prompt_as_sent=sent if sent != req.prompt else None,
            negative_as_sent=sent_negative if sent_negative != req.negative_prompt else None, family=family,
        )

    def _peek_ref(self, req: GenerationRequest) -> ModelRef | None:
        """The request's model when it resolves; None leaves the error to the real resolve."""
        try:
            return self.locator.resolve(req.model_id or self.settings.default_model)
        except WorkerError:
            return None

    def _plan_loras(self, req: GenerationRequest, ref: ModelRef, warnings: list[str]) -> tuple[GenerationRequest, list[PlannedLoRA]]:
        """data.loras plus the prompt's <lora:name:weight> tags (cut out of the prompt), found and base-checked."""
        prompt, tags = extract_lora_tags(req.prompt)
        negative, negative_tags = extract_lora_tags(req.negative_prompt) if req.negative_prompt else (req.negative_prompt, [])
        if negative_tags:
            warnings.append(f"LoRA tags in the negative prompt are removed and not applied: {', '.join(n for n, _ in negative_tags)}")
        wanted = [(lr.name, lr.weight, "request") for lr in req.loras] + [(n, w, "prompt") for n, w in tags]
        planned, more = AdapterManager.plan(self.locator.catalog, wanted, ref.model_id, ref.base_model, self.locator.allow_pickle)
        warnings.extend(more)
        if tags or negative_tags:
            req = req.model_copy(update={"prompt": prompt, "negative_prompt": negative})
        return req, planned

    def _plan_embeddings(self, req: GenerationRequest, ref: ModelRef, warnings: list[str]) -> tuple[GenerationRequest, list[Triggered]]:
        """Embeddings named in data.textual_inversions or triggered by a word of the prompts (A1111)."""
        catalog, allow = self.locator.catalog, self.locator.allow_pickle
        available = [i for i in catalog.items() if i.kind == "embedding" and (allow or not i.pickle)]
        triggered = find_triggered(req.prompt, req.negative_prompt, available) if available else []
        kept, skipped = select(triggered, ref.base_model)
        warnings.extend(skipped)
        for i, name in enumerate(req.textual_inversions):
            where = f"data.textual_inversions[{i}]"
            item = catalog.find(name, "embedding", where)
            if item.pickle and not allow:
                raise pickle_refused(name, where)
            fits, problems = select([Triggered(item, triggers_of(item)[0])], ref.base_model)
            if problems:
                raise _invalid(where, problems[0].split("; ")[0])
            if not any(t.item == item for t in kept):
                kept.extend(fits)
        if kept:
            req = req.model_copy(update={"prompt": rewrite(req.prompt, kept), "negative_prompt": rewrite(req.negative_prompt, kept)})
        return req, kept

    def _known_device(self, device: str) -> str | None:
        """The device a plan will run on; None while that waits for the runtime (the job checks again)."""
        name = self.runtime.device_name(device)
        if name in ("default", "pending", ""):
            return None
        return "cuda:0" if name == "cuda" else name

    def _plan_vae(self, req: GenerationRequest, ref: ModelRef, warnings: list[str]) -> CatalogItem | None:
        """The standalone VAE the request names (None: the model's own, or the fp16 choice at run time)."""
        if req.vae is None or req.vae == "model":
            return None
        catalog = self.locator.catalog
        try:
            item = catalog.find(req.vae, "vae", "data.vae")
        except ModelNotFound as not_found:
            try:
                other = catalog.find(req.vae, None, "data.vae")
            except (ModelNotFound, ValidationFailed):
                raise not_found from None
            raise _invalid("data.vae", f"{other.model_id!r} is a {other.kind}, not a VAE") from None
        if item.pickle and not self.locator.allow_pickle:
            raise pickle_refused(req.vae, "data.vae")
        latent = item.details.get("latent_channels")
        if latent not in (None, 4):
            raise _invalid("data.vae", f"{item.model_id!r} has {latent} latent channels; {ref.base_model} models use 4")
        family = {"sdxl": "SDXL", "pony": "SDXL", "sd_1_5": "SD 1.x/2.x", "sd_2": "SD 1.x/2.x"}
        if family.get(item.base_model, "?") not in ("?", family.get(ref.base_model)):
            warnings.append(f"VAE {item.model_id!r} looks like an {family[item.base_model]} VAE; {ref.model_id} is a {ref.base_model} model")
        return item

    def _plan_refiner(self, req: GenerationRequest, mode: str, ref: ModelRef) -> ModelRef | None:
        if req.refiner is None:
            return None
        if ref.base_model not in SDXL_BASES:
            raise _invalid("data.refiner", f"a refiner needs an SDXL base model; {ref.model_id} is a {ref.base_model} model")
        if mode not in ("text2img", "img2img"):
            raise _invalid("data.refiner", f"a refiner works with text2img and img2img, not {mode}")
        refiner = self.locator.resolve(req.refiner.model, "data.refiner.model")
        if refiner.base_model not in (*SDXL_BASES, "sdxl_refiner"):
            raise _invalid("data.refiner.model", f"{refiner.model_id} is a {refiner.base_model} model; a refiner must be an SDXL (refiner) model")
        return refiner

    def _plan_controlnets(self, req: GenerationRequest, mode: str, ref: ModelRef, width: int, height: int, roots: list[Path]) -> list[ControlSpec]:
        if not req.controlnets:
            return []
        if req.hires is not None:
            raise _invalid("data.hires", "hires fix and ControlNets cannot be combined in one request")
        if req.refiner is not None and mode != "text2img":
            raise _invalid("data.refiner", f"a refiner with ControlNets works with text2img, not {mode}")
        model_unet = unet_config(ref.path) if ref.format == "diffusers" else None
        return plan_controlnets(req.controlnets, ref.base_model, width, height, roots, self.locator.catalog, self.locator.allow_pickle, model_unet)
