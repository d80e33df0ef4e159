"""Generation: plan a request (all checks before it is queued), then run it as a job.

The job: load the run's pipelines (generation_load), make its pipeline calls through the pipeline
runner (managers.runner: progress, previews, cancel, memory modes, the out-of-memory retry), then
post-process and deliver (generation_output). Planning is generation_plan's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..managers import hires, infotext, modes, optimize
from ..managers.adapters import AdapterManager
from ..managers.controlnet import ControlNetManager, controlnet_call_kwargs
from ..managers.denoise import generators
from ..managers.embeddings import EmbeddingManager
from ..managers.locator import ModelLocator
from ..managers.lora import LoRAManager
from ..managers.output import OutputWriter
from ..managers.pipelines import PipelineManager
from ..managers.runner import PipelineRunner, Steps, ran
from ..managers.runtime import RssSampler, Runtime
from ..managers.vae import VAEManager
from ..prompts.encode import pipeline_prompt_kwargs
from ..schemas.generation import GenerationRequest
from ..settings import Settings
from .generation_load import GenerationLoading, RunPipes
from .generation_output import GenerationOutput, finish_job, start_job
from .generation_plan import (
    GenerationPlanning,
    Plan,
    blame_preset,
    kept_from_preset,
    limit_problems,
    native_size,
)

if TYPE_CHECKING:
    from ..jobs.context import JobContext
    from ..store.presets import PresetStore

__all__ = ["GenerationInterface", "Plan", "RunPipes", "blame_preset", "finish_job", "kept_from_preset", "limit_problems", "native_size", "start_job"]


class GenerationInterface(GenerationPlanning, GenerationLoading, GenerationOutput):
    """Plans generation requests (generation_plan) and runs them as jobs: load (generation_load),
    denoise through the pipeline runner (managers.runner), deliver (generation_output)."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        locator: ModelLocator,
        pipelines: PipelineManager,
        presets: PresetStore | None = None,
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
        self.runner = PipelineRunner(pipelines.memory)  # every pipeline call of image, batch and video jobs
        self.runner.wrappers.append(optimize.runner_wrapper(settings))  # the request's `optimize` on every call
        self._upscalers: Any = None

    @property
    def upscalers(self) -> Any:
        """Upscaler models for post_processing (managers.upscale), made on first use."""
        if self._upscalers is None:
            from ..managers.upscale import UpscalerManager

            self._upscalers = UpscalerManager(self.pipelines.memory, self.locator.catalog, self.locator.allow_pickle)
        return self._upscalers

    # ---- the job ---------------------------------------------------------------------------------

    def run(self, ctx: JobContext, plan: Plan) -> dict[str, Any]:
        t_start, perf, rss, device, dtype, warnings = start_job(ctx, self.runtime, plan)
        hashing = infotext.Hashing(self.hash_cache, self._resources(plan, plan.vae.path if plan.vae is not None else None))
        with contextlib.ExitStack() as stack:
            pipes = self._load(ctx, plan, device, dtype, stack, warnings)
            pipes.hashing = hashing
            perf["load_ms"] = round(pipes.load_ms, 2)
            perf["loaded_from"] = "disk" if pipes.fresh else "cache"
            return self.runner.retrying(
                ctx,
                lambda warning: self._run_loaded(ctx, plan, pipes, rss, t_start, warnings if warning is None else [*warnings, warning]),
                pipes.main,
                pipes.loaded.device,
                pipes.keys,
                lambda why: f"out of memory, also in low-memory mode ({why}); lower width/height or num_images, or free VRAM",
            )

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
        with self.runner.settings(pipes.all(), req.precision), self._adapters(ctx, plan, pipes, warnings):
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
        """One pipeline call of the run: progress counts over every stage (the last one says the total)."""
        offset = pipes.steps_done
        expected = ctx.session.total_steps or 0
        steps = Steps(lambda n: offset + n if last else max(expected, offset + n + 1), offset)
        out = self.runner.call(
            ctx, pipe, kwargs, steps, rss=rss, request=plan.req, device=pipes.loaded.device,
            offload=self.runner.offload_mode(pipes.loaded, plan.req.precision), keys=pipes.keys, previews=plan.ref.base_model,
        )
        pipes.steps_done = offset + ran(pipe)
        return out
