"""Generation: plan a request (all checks before it is queued), then run it as a job."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .. import __version__
from ..dispatch.context import JobContext
from ..families import Family, for_base_model, supported_base_models
from ..families.sd import SDFamily
from ..managers import hires, infotext, modes, optimize, precision, schedulers, weights
from ..managers.controlnet import ControlNetManager, ControlSpec, check_against_unet, controlnet_call_kwargs, pipeline_for, plan_controlnets, unet_config
from ..managers.adapters import AdapterManager, PlannedLoRA
from ..managers.denoise import denoiser_of, force_cancel_hooks, generators
from ..managers.embeddings import EmbeddingManager, Triggered, find_triggered, rewrite, select, triggers_of
from ..managers.locator import ModelLocator, ModelRef, pickle_refused
from ..managers.lora import LoRAManager
from ..managers.lowmem import OomInjector, is_oom, low_memory_mode
from ..managers.memory import collect
from ..managers.output import OutputWriter, b64, encode, unique_names
from ..managers.preview import preview_extra, preview_maker
from ..managers.pipelines import LoadedPipeline, PipelineManager
from ..managers.runtime import Runtime, RssSampler
from ..managers.vae import VAEManager, folder_is_fp16_safe, fp16_safe
from ..prompts.encode import pipeline_prompt_kwargs
from ..prompts.lora_tags import extract_lora_tags
from ..errors import ModelNotFound, OutOfMemory, ValidationFailed, WorkerError
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
    vae: "CatalogItem | None" = None  # a standalone VAE the request names
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


@dataclass
class RunPipes:
    """The pipelines one run uses, over cache entries pinned for the run."""

    loaded: LoadedPipeline
    main: Any  # the mode's pipeline (a per-run copy when the VAE is swapped)
    dtype: str
    keys: list[str]  # every cache entry the run uses
    vae: str = "model"  # the VAE used: a catalog id, or "model" (the model's own)
    refiner_loaded: LoadedPipeline | None = None
    refiner: Any = None  # the refiner's img2img pipeline
    second: Any = None  # hires: the img2img pipeline over the base's components
    load_ms: float = 0.0
    fresh: bool = False  # something was read from disk
    steps_done: int = 0  # denoising steps run so far, over every stage
    vae_path: Path | None = None  # the standalone VAE's file or folder (its infotext hash)
    hashing: infotext.Hashing | None = None  # the infotext's file hashes, computed while the job runs

    def all(self) -> list[Any]:
        return [p for p in (self.main, self.refiner, self.second) if p is not None]


def native_size(ref: ModelRef) -> int:
    """The model's default side: unet sample_size x VAE scale factor, read from the configs."""
    try:
        unet = json.loads((ref.path / "unet" / "config.json").read_text())
        vae = json.loads((ref.path / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 1024 if ref.base_model.startswith("sdxl") else 512


def start_job(ctx: JobContext, runtime: Runtime, plan: Any) -> tuple[float, dict[str, Any], RssSampler, str, str, list[str]]:
    """The opening of every generation job (image or video): clock and RSS sampler started, torch
    waited for, the device and dtype settled and checked, status "loading"."""
    t_start = time.perf_counter()
    rss = RssSampler()
    rss.sample()
    runtime.wait()
    device = runtime.device_name(runtime.check_device(plan.device))
    ctx.session.device_id = device
    dtype = plan.dtype or runtime.dtype_name
    warnings = list(plan.warnings)
    precision.check(plan.req.precision, device, dtype, warnings)
    ctx.set_status("loading")
    return t_start, ctx.session.performance, rss, device, dtype, warnings


def finish_job(
    ctx: JobContext, runtime: Runtime, rss: RssSampler, device: str, t_start: float, steps: int, inference_s: float, encode_s: float, save_s: float
) -> None:
    """The close of every generation job (start_job's twin): timings, speed and peaks into the
    session's performance and resources."""
    rss.sample()
    perf = ctx.session.performance
    perf.update(
        inference_ms=round(inference_s * 1000, 2),
        encode_ms=round(encode_s * 1000, 2),
        postprocess_ms=round(save_s * 1000, 2),
        steps_per_second=round(steps / inference_s, 3) if inference_s > 0 else 0.0,
        peak_vram_mb=runtime.peak_vram_mb(device),
        peak_rss_mb=rss.peak_mb,
    )
    perf["total_ms"] = round(perf.get("queue_ms", 0.0) + (time.perf_counter() - t_start) * 1000, 2)
    ctx.session.resources.update(peak_rss_mb=rss.peak_mb, peak_vram_mb=perf["peak_vram_mb"], device=device)


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
    skipped = {k: v for k, v in (preset or {}).get("preset_skipped", {}).items() if v != getattr(req, k)}
    if preset is None or not skipped:
        return []
    said = ", ".join(f"{k} {v:g}" for k, v in skipped.items())
    own = ", ".join(f"{k} {getattr(req, k):g}" for k in skipped)
    return [f"the {preset['preset']} preset of {preset['preset_base_model']} sets {said}; {model_id} keeps its own {own} (send {' / '.join(skipped)} to set them)"]


class GenerationInterface:
    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        locator: ModelLocator,
        pipelines: PipelineManager,
        presets: "PresetStore | None" = None,
        vaes: VAEManager | None = None,
        loras: LoRAManager | None = None,
        adapters: AdapterManager | None = None,
        embeddings: EmbeddingManager | None = None,
        controlnets: ControlNetManager | None = None,
    ):
        self.settings = settings
        self.presets = presets
        self.runtime = runtime
        self.locator = locator
        self.pipelines = pipelines
        self.vaes = vaes or VAEManager(pipelines.memory, runtime.torch_dtype)  # standalone VAEs (data.vae)
        self.controlnets = controlnets or ControlNetManager(pipelines.memory, runtime.torch_dtype)
        self.loras = loras or LoRAManager(pipelines.memory, locator.allow_pickle)  # LoRA tensors (RAM cache)
        self.adapters = adapters or AdapterManager()  # LoRAs on the shared UNets / text encoders
        self.embeddings = embeddings or EmbeddingManager(locator.allow_pickle)  # textual inversion
        self.output = OutputWriter(settings.output_dir)
        self.oom_drill = OomInjector()
        self._upscalers: Any = None

    @property
    def upscalers(self) -> Any:
        """Upscaler models for post_processing (managers.upscale), made on first use."""
        if self._upscalers is None:
            from ..managers.upscale import UpscalerManager

            self._upscalers = UpscalerManager(self.pipelines.memory, self.locator.catalog, self.locator.allow_pickle)
        return self._upscalers

    # ---- planning (runs inline, before queueing) -----------------------------------------------

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
            req, preset = self.presets.for_request(req, ref, fam.preset_keeps(ref) if fam is not None else ())  # type: ignore[assignment]
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

    def _plan_vae(self, req: GenerationRequest, ref: ModelRef, warnings: list[str]) -> "CatalogItem | None":
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

    # ---- the job ---------------------------------------------------------------------------------

    def run(self, ctx: JobContext, plan: Plan) -> dict[str, Any]:
        t_start, perf, rss, device, dtype, warnings = start_job(ctx, self.runtime, plan)
        hashing = infotext.Hashing(self.hash_cache, self._resources(plan, plan.vae.path if plan.vae is not None else None))
        with contextlib.ExitStack() as stack:
            pipes = self._load(ctx, plan, device, dtype, stack, warnings)
            pipes.hashing = hashing
            perf["load_ms"] = round(pipes.load_ms, 2)
            perf["loaded_from"] = "disk" if pipes.fresh else "cache"
            try:
                return self._run_loaded(ctx, plan, pipes, rss, t_start, warnings)
            except Exception as exc:  # noqa: BLE001
                if not is_oom(exc):
                    raise
                return self._retry_low_memory(ctx, plan, pipes, rss, t_start, exc, warnings)

    def _load(self, ctx: JobContext, plan: Plan, device: str, dtype: str, stack: contextlib.ExitStack, warnings: list[str]) -> RunPipes:
        """The run's pipelines: model, refiner and VAE from the cache (or disk), pinned until `stack` closes."""
        loaded, report = stack.enter_context(self.pipelines.use(plan.ref, device, dtype, weights.weights_of(plan.req.precision)))
        ctx.log(f"model {plan.ref.model_id} " + (f"loaded ({report.disk_reads} component(s) read from disk)" if report.fresh else "from the cache"))
        main = plan.family.mode_pipeline(self.pipelines, loaded, plan.mode)  # [families] Flux Fill models inpaint with FluxFillPipeline
        pipes = RunPipes(loaded, main, dtype, list(loaded.keys.values()), load_ms=report.ms, fresh=report.fresh)
        if plan.refiner is not None:
            rl, rr = stack.enter_context(self.pipelines.use(plan.refiner, device, dtype))
            ctx.log(f"refiner {plan.refiner.model_id} " + ("loaded" if rr.fresh else "from the cache"))
            pipes.refiner_loaded, pipes.refiner = rl, self.pipelines.for_mode(rl, "img2img")
            pipes.keys += [k for k in rl.keys.values() if k not in pipes.keys]
            pipes.load_ms += rr.ms
            pipes.fresh = pipes.fresh or rr.fresh
        if plan.hires is not None:
            pipes.second = self.pipelines.for_mode(loaded, "img2img")
        if plan.req.precision.cpu_offload != "none" and loaded.offloaded:
            warnings.append(f"cpu_offload ignored: {plan.ref.model_id} already runs with {loaded.memory_mode} (model.optimize_model)")
        item = plan.vae or self._fp16_vae(plan, loaded, dtype, warnings)
        if item is not None:
            t0 = time.perf_counter()
            entry = self.vaes.load_standalone(item.path, item.model_id, dtype, plan.ref.base_model)
            stack.enter_context(self.pipelines.memory.pinned([entry.key]))
            self.pipelines.memory.place([entry.key], loaded.device)
            pipes.load_ms += (time.perf_counter() - t0) * 1000
            pipes.vae, pipes.vae_path = item.model_id, item.path
            pipes.keys.append(entry.key)
            # Per-run pipelines with this VAE; the cached ones keep the model's own.
            pipes.main = modes.with_components(pipes.main, plan.mode, vae=entry.obj)
            if pipes.refiner is not None:
                pipes.refiner = modes.with_components(pipes.refiner, "img2img", vae=entry.obj)
            if pipes.second is not None:
                pipes.second = modes.with_components(pipes.second, "img2img", vae=entry.obj)
            ctx.log(f"VAE {item.model_id} for this run")
        if plan.controlnets:
            self._load_controlnets(ctx, plan, pipes, dtype, stack)
        return pipes

    def _load_controlnets(self, ctx: JobContext, plan: Plan, pipes: RunPipes, dtype: str, stack: contextlib.ExitStack) -> None:
        """The run's ControlNet pipeline over the mode pipeline's components, ControlNets pinned for the run."""
        t0 = time.perf_counter()
        before = self.controlnets.disk_loads
        model_unet = dict(denoiser_of(pipes.main).config)  # [families] Flux: the transformer
        nets = []
        for spec in plan.controlnets:
            entry = self.controlnets.load_spec(spec, dtype)
            stack.enter_context(self.pipelines.memory.pinned([entry.key]))
            self.pipelines.memory.place([entry.key], pipes.loaded.device)
            check_against_unet(spec, entry.obj, model_unet)
            pipes.keys.append(entry.key)
            nets.append(entry.obj)
        pipes.main = pipeline_for(pipes.main, plan.mode, nets)
        pipes.load_ms += (time.perf_counter() - t0) * 1000
        pipes.fresh = pipes.fresh or self.controlnets.disk_loads > before
        ctx.log(f"ControlNet(s) {', '.join(s.model_id for s in plan.controlnets)} for this run")

    def _fp16_vae(self, plan: Plan, loaded: LoadedPipeline, dtype: str, warnings: list[str]) -> "CatalogItem | None":
        """fp16 on SDXL with no VAE asked for: an fp16-safe VAE of the models dirs, when there is one.

        SDXL's original VAE overflows in fp16; without a safe one diffusers upcasts it to fp32
        for decoding (force_upcast), which stays the behaviour when none is found.
        """
        if plan.req.vae is not None or dtype != "fp16" or plan.ref.base_model not in SDXL_BASES:
            return None
        if fp16_safe(getattr(loaded.pipe, "vae", None)):
            return None
        for item in self.locator.catalog.items():
            if item.kind == "vae" and item.base_model in SDXL_BASES and folder_is_fp16_safe(item.path) and (self.locator.allow_pickle or not item.pickle):
                warnings.append(
                    f"fp16 with {plan.ref.model_id}, whose VAE overflows in fp16: using the fp16-safe VAE {item.model_id!r} "
                    '(send vae: "model" to keep the model\'s own)'
                )
                return item
        return None

    def _retry_low_memory(self, ctx: JobContext, plan: Plan, pipes: RunPipes, rss: RssSampler, t_start: float, exc: BaseException, warnings: list[str]) -> dict[str, Any]:
        """The job ran out of memory: free what is idle, retry once in the lower-memory mode."""
        ctx.log(f"out of memory ({str(exc).splitlines()[0]}); freeing idle memory and retrying once in low-memory mode", "warning")
        self.pipelines.memory.offload_idle()
        collect()
        try:
            with low_memory_mode(pipes.main, pipes.loaded.device, self.pipelines.memory, pipes.keys) as used:
                warning = f"ran out of memory at first; retried once with {', '.join(used)}"
                return self._run_loaded(ctx, plan, pipes, rss, t_start, [*warnings, warning])
        except Exception as again:  # noqa: BLE001
            if is_oom(again):
                collect()
                raise OutOfMemory(
                    f"out of memory, also in low-memory mode ({str(again).splitlines()[0]}); lower width/height or num_images, or free VRAM"
                ) from again
            raise

    def _run_loaded(self, ctx: JobContext, plan: Plan, pipes: RunPipes, rss: RssSampler, t_start: float, warnings: list[str]) -> dict[str, Any]:
        req, perf = plan.req, ctx.session.performance
        device = pipes.loaded.device
        ctx.check_cancelled()
        rss.sample()
        ctx.set_status("running")
        self.runtime.reset_peak(device)
        ctx.session.total_steps = self._expected_steps(plan)
        pipes.steps_done = 0
        t_inf = time.perf_counter()
        ctx.start_steps()
        with precision.shared_settings(pipes.all(), req.precision), self._adapters(ctx, plan, pipes, warnings):
            pil_images = self._denoise(ctx, plan, pipes, rss)
        inference_s = time.perf_counter() - t_inf
        pipes.loaded.runs += 1
        ctx.log(f"denoised {req.num_images} image(s) in {inference_s:.2f}s")

        ctx.set_status("postprocessing")
        if req.post_processing:
            from ..managers.upscale import apply_post_processing

            t_pp = time.perf_counter()
            pil_images = apply_post_processing(pil_images, req.post_processing, ctx, self.upscalers, device)
            perf["upscale_ms"] = round((time.perf_counter() - t_pp) * 1000, 2)
        params = self._effective(plan, pipes.main, pipes)
        images, encode_s, save_s = self._deliver(pil_images, plan, params, ctx)
        finish_job(ctx, self.runtime, rss, device, t_start, pipes.steps_done or req.steps, inference_s, encode_s, save_s)
        return {
            "images": images,
            "parameters": params,
            "performance": dict(perf),
            "session_id": ctx.session.session_id,
            "warnings": warnings,
        }

    @contextlib.contextmanager
    def _adapters(self, ctx: JobContext, plan: Plan, pipes: RunPipes, warnings: list[str]) -> Iterator[None]:
        """The run's LoRAs and embeddings on its pipelines; the shared modules rest without LoRA after it.

        Every run goes through here, with LoRAs or without: the UNet and text encoders are shared by
        every pipeline of the model, so a run that wants none must switch off what an earlier one set.
        """
        t0 = time.perf_counter()
        for pipe in pipes.all():
            warnings.extend(self.embeddings.ensure_loaded(pipe, plan.embeddings, plan.ref.model_id))
        uses = AdapterManager.load(self.loras, plan.loras)
        with self.adapters.applied(pipes.main, uses, plan.ref.model_id, plan.ref.base_model) as more:
            ctx.session.performance["adapters_ms"] = round((time.perf_counter() - t0) * 1000, 2)
            warnings.extend(more)
            if uses:
                ctx.log("LoRA " + ", ".join(f"{u.lora_id}:{u.weight:g}" for u in uses))
            yield

    @staticmethod
    def _expected_steps(plan: Plan) -> int:
        """Steps the run should take, for progress before the scheduler says (each stage corrects it)."""
        req = plan.req
        first = req.steps if plan.mode == "text2img" else max(1, int(req.steps * req.strength))
        if plan.hires is not None:
            return first + plan.hires.steps
        return first

    def _denoise(self, ctx: JobContext, plan: Plan, pipes: RunPipes, rss: RssSampler) -> list[Any]:
        """The pipeline call(s) of the run: one, or base + refiner, or first pass + hires pass."""
        req, torch = plan.req, self.runtime.torch
        # [families] guidance and the family's options (SD: {"guidance_scale"}; Flux: + max_sequence_length, true CFG)
        common = {**plan.family.call_kwargs(req, plan), "num_images_per_prompt": req.num_images}
        gens = generators(torch, plan.seed, req.num_images)
        # [families] a family without the SD sampler table builds its own (HiDream: flow-matching Euler or UniPC)
        own = plan.family.scheduler_for(req, pipes.loaded.scheduler_config)
        pipes.main.scheduler = own if own is not None else self.pipelines.fresh_scheduler(pipes.loaded, plan.scheduler)
        first = {
            **plan.family.prompt_kwargs(pipes.main, req),
            **modes.call_kwargs(plan.mode, plan.inputs or modes.ModeInputs(), plan.width, plan.height, req.strength),
            **plan.family.mode_kwargs(plan),
            **(controlnet_call_kwargs(pipes.main, plan.controlnets) if plan.controlnets else {}),
            **common,
            "num_inference_steps": req.steps,
            "generator": gens,
        }
        if plan.refiner is not None and req.refiner is not None:
            # diffusers' ensemble of expert denoisers: the same generators carry on into the refiner.
            switch = req.refiner.switch_at
            latents = self._call(ctx, plan, pipes, pipes.main, rss, False, **first, denoising_end=switch, output_type="latent").images
            assert pipes.refiner_loaded is not None
            pipes.refiner.scheduler = self.pipelines.fresh_scheduler(pipes.refiner_loaded, plan.scheduler)
            # The refiner runs without the LoRAs (they are made for the base); it may share text_encoder_2.
            with self.adapters.applied(pipes.refiner, [], plan.refiner.model_id, plan.refiner.base_model):
                out = self._call(
                    ctx, plan, pipes, pipes.refiner, rss, True,
                    **self._prompt(pipes.refiner, req), **common,
                    image=latents, num_inference_steps=req.steps, denoising_start=switch, generator=gens, output_type="pil",
                )
            return out.images
        if plan.hires is not None:
            hp = plan.hires
            latent = hp.latent_mode is not None
            low = self._call(ctx, plan, pipes, pipes.main, rss, False, **first, output_type="latent" if latent else "pil").images
            image = hires.upscale_latents(torch, low, hp, pipes.main.vae_scale_factor) if latent else hires.upscale_images(low, hp)
            pipes.second.scheduler = self.pipelines.fresh_scheduler(pipes.loaded, plan.scheduler)
            out = self._call(
                ctx, plan, pipes, pipes.second, rss, True,
                **self._prompt(pipes.second, req), **common,
                image=image, strength=hp.denoise, num_inference_steps=hp.scheduler_steps,
                generator=generators(torch, plan.seed, req.num_images), output_type="pil",
            )
            return out.images
        return self._call(ctx, plan, pipes, pipes.main, rss, True, **first, output_type="pil").images

    @staticmethod
    def _prompt(pipe: Any, req: GenerationRequest) -> dict[str, Any]:
        return pipeline_prompt_kwargs(pipe, req.prompt, req.negative_prompt, req.clip_skip, req.prompt_syntax)

    def _call(self, ctx: JobContext, plan: Plan, pipes: RunPipes, pipe: Any, rss: RssSampler, last: bool, **kwargs: Any) -> Any:
        """One pipeline call: progress counted over every stage, cancel at step ends, force cancel inside."""
        torch = self.runtime.torch
        offset = pipes.steps_done
        expected = ctx.session.total_steps or 0
        previews = preview_maker(ctx, plan.ref.base_model)  # None unless the request asked for previews

        def callback(p: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
            ran = int(getattr(p, "_num_timesteps", 0) or 0)
            step = offset + step_index + 1
            extra = preview_extra(previews, step, callback_kwargs) if previews is not None else None
            ctx.progress(step, offset + ran if last else max(expected, offset + ran + 1), extra=extra)
            rss.sample()
            self.oom_drill.maybe_raise(step)
            ctx.check_cancelled()
            return callback_kwargs

        offload = "none" if pipes.loaded.offloaded else plan.req.precision.cpu_offload
        with (
            precision.offloaded(pipe, offload, pipes.loaded.device, self.pipelines.memory, pipes.keys),
            optimize.optimized(pipe, plan.req.optimize, self.settings.optimize, ctx.session.performance, self.settings.data_dir, bool(plan.loras)),
            force_cancel_hooks(denoiser_of(pipe), ctx),
            torch.inference_mode(),
        ):
            out = pipe(**kwargs, callback_on_step_end=callback)
        pipes.steps_done = offset + int(getattr(pipe, "_num_timesteps", 0) or 0)
        return out

    def _effective(self, plan: Plan, pipe: Any, pipes: RunPipes | None = None) -> dict[str, Any]:
        req = plan.req
        sched = type(pipe.scheduler).__name__
        extra: dict[str, Any] = {"strength": req.strength} if plan.mode != "text2img" else {}
        dtype = pipes.dtype if pipes is not None else self.runtime.dtype_name
        if pipes is not None and pipes.refiner is not None and plan.refiner is not None and req.refiner is not None:
            extra["refiner"] = {"model": plan.refiner.model_id, "switch_at": req.refiner.switch_at}
        if pipes is not None and pipes.second is not None and plan.hires is not None:
            extra["hires"] = plan.hires.describe()
        if plan.controlnets:
            extra["controlnets"] = [s.describe() for s in plan.controlnets]
        if plan.loras:
            extra["loras"] = [p.public() for p in plan.loras]
        if plan.embeddings:
            extra["textual_inversions"] = sorted({t.item.model_id for t in plan.embeddings})
        extra.update(plan.family.effective(req, plan))  # [families] e.g. Flux's max_sequence_length, true_cfg_scale
        extra["optimize"] = optimize.parameters(pipe, req.optimize, self.settings.optimize, bool(plan.loras))
        extra["hashes"] = self._hashes(plan, pipes)
        return {
            "mode": plan.mode,
            "prompt": plan.prompt_as_sent if plan.prompt_as_sent is not None else req.prompt,
            "negative_prompt": plan.negative_as_sent if plan.negative_as_sent is not None else req.negative_prompt,
            **plan.ref.describe(),
            "width": plan.width,
            "height": plan.height,
            "steps": req.steps,
            "guidance_scale": req.guidance_scale,
            "clip_skip": req.clip_skip,
            "prompt_syntax": req.prompt_syntax,
            "seed": plan.seed,
            "num_images": req.num_images,
            "scheduler": sched,
            "sampler": plan.scheduler.id if plan.scheduler else "default",
            "sampler_name": plan.scheduler.display_name if plan.scheduler else schedulers.display_name(pipe.scheduler),
            **extra,
            "vae": pipes.vae if pipes is not None else "model",
            "device": self.runtime.device_name(plan.device),
            "dtype": dtype,
            "precision": {**req.precision.model_dump(), "dtype": dtype},
            "output": req.output.model_dump(),
            "version": f"sdworker {__version__}",
            **(plan.preset or {}),
        }

    @property
    def hash_cache(self) -> Any:
        return infotext.hash_cache_for(self.settings.data_dir)

    def _resources(self, plan: Plan, vae: Path | None) -> list[infotext.Resource]:
        texts = (plan.prompt_as_sent or plan.req.prompt, plan.negative_as_sent or plan.req.negative_prompt)
        return infotext.run_resources(plan.ref.source, vae, plan.loras, plan.embeddings, texts)

    def _hashes(self, plan: Plan, pipes: RunPipes | None) -> dict[str, str]:
        """The infotext's hashes (parameters.hashes): from the job's background hashing, plus an
        fp16-safe VAE chosen at load time; computed here for a batch item (mostly cache hits)."""
        if pipes is None or pipes.hashing is None:
            return infotext.compute(self.hash_cache, self._resources(plan, None))
        out = pipes.hashing.result()
        if pipes.vae_path is not None and "vae" not in out:
            out.update(infotext.compute(self.hash_cache, infotext.vae_resource(pipes.vae_path)))
        return out

    def _deliver(self, pil_images: list[Any], plan: Plan, params: dict[str, Any], ctx: JobContext) -> tuple[list[dict[str, Any]], float, float]:
        fmt, opts = plan.req.output.format, plan.req.output
        images: list[dict[str, Any]] = []
        encode_s = save_s = 0.0
        for i, img in enumerate(pil_images):
            seed = plan.seed + i
            text = infotext.build({**params, "seed": seed})
            t0 = time.perf_counter()
            data = encode(img, fmt, opts.quality, text)
            encode_s += time.perf_counter() - t0
            entry: dict[str, Any] = {
                "index": i,
                "seed": seed,
                "width": img.width,
                "height": img.height,
                "format": fmt,
                "infotext": text,
            }
            if opts.return_base64:
                entry["base64"] = b64(data)
            path = plan.paths[i] if i < len(plan.paths) else None
            if path is not None:
                t1 = time.perf_counter()
                path = self.output.write_atomic(path, data, replace=not plan.exclusive, unique=unique_names(opts.save_path))
                save_s += time.perf_counter() - t1
                entry["path"] = str(path)
                ctx.session.outputs.append(str(path))
            images.append(entry)
        return images, encode_s, save_s
