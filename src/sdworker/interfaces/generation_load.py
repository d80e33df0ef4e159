"""Loading a generation run's pipelines: model, refiner, VAE and ControlNets, pinned for the run."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..managers import infotext, modes, weights
from ..managers.controlnet import ControlNetManager, check_against_unet, pipeline_for
from ..managers.denoise import denoiser_of
from ..managers.locator import ModelLocator
from ..managers.pipelines import LoadedPipeline, PipelineManager
from ..managers.vae import VAEManager, folder_is_fp16_safe, fp16_safe
from .generation_plan import SDXL_BASES, Plan

if TYPE_CHECKING:
    from ..jobs.context import JobContext
    from ..managers.catalog import CatalogItem


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


class GenerationLoading:
    """GenerationInterface's loading step of a job."""

    locator: ModelLocator
    pipelines: PipelineManager
    vaes: VAEManager
    controlnets: ControlNetManager

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

    def _fp16_vae(self, plan: Plan, loaded: LoadedPipeline, dtype: str, warnings: list[str]) -> CatalogItem | None:
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
