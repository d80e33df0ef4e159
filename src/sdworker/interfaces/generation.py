"""Generation: plan a request (all checks before it is queued), then run it as a job."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..dispatch.context import JobContext
from ..managers import modes, schedulers
from ..managers.denoise import force_cancel_hooks, generators, step_callback
from ..managers.locator import ModelLocator, ModelRef
from ..managers.output import OutputWriter, b64, encode, infotext
from ..managers.pipelines import PipelineManager
from ..managers.runtime import Runtime, RssSampler
from ..prompts.encode import pipeline_prompt_kwargs
from ..protocol.errors import ValidationFailed
from ..schemas.generation import GenerationRequest
from ..settings import Settings

if TYPE_CHECKING:
    from ..store.presets import PresetStore


def _compel_installed() -> bool:
    try:
        import compel  # noqa: F401
    except Exception:
        return False
    return True


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


def native_size(ref: ModelRef) -> int:
    """The model's default side: unet sample_size x VAE scale factor, read from the configs."""
    try:
        unet = json.loads((ref.path / "unet" / "config.json").read_text())
        vae = json.loads((ref.path / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 1024 if ref.base_model.startswith("sdxl") else 512


class GenerationInterface:
    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        locator: ModelLocator,
        pipelines: PipelineManager,
        presets: "PresetStore | None" = None,
    ):
        self.settings = settings
        self.presets = presets
        self.runtime = runtime
        self.locator = locator
        self.pipelines = pipelines
        self.output = OutputWriter(settings.output_dir)

    # ---- planning (runs inline, before queueing) -----------------------------------------------

    def plan(self, req: GenerationRequest, mode: str, session_id: str) -> Plan:
        s = self.settings
        ref: ModelRef | None = None
        preset: dict[str, Any] | None = None
        if req.preset is not None and self.presets is not None:
            # The preset's values go under the fields the request set itself (model_fields_set);
            # the checks below then see the effective request. Its sampler + schedule apply only
            # when the request names neither a sampler nor a scheduler of its own.
            ref = self.locator.resolve(req.model_id or s.default_model)
            req, preset = self.presets.for_request(req, ref)  # type: ignore[assignment]
            if req.scheduler is None and req.sampler is None and preset.get("preset_sampler"):
                req = req.model_copy(update={"sampler": preset["preset_sampler"], "scheduler": preset.get("preset_scheduler")})
        problems: list[dict[str, str]] = []
        for fld in ("width", "height"):
            v = getattr(req, fld)
            if v is not None and v > s.max_resolution:
                problems.append({"path": f"data.{fld}", "message": f"{v} is over the limit of {s.max_resolution}"})
        if req.num_images > s.max_batch_size:
            problems.append({"path": "data.num_images", "message": f"{req.num_images} is over the limit of {s.max_batch_size}"})
        if req.steps > s.max_steps:
            problems.append({"path": "data.steps", "message": f"{req.steps} is over the limit of {s.max_steps}"})
        choice = None
        try:
            choice = schedulers.resolve(req.scheduler, req.sampler)
        except ValidationFailed as exc:
            problems.extend(exc.details)
        if req.prompt_syntax == "compel" and not _compel_installed():
            problems.append({"path": "data.prompt_syntax", "message": "compel is not installed in this worker; use a1111 or none"})
        if problems:
            if preset is not None:  # say where a value the request did not send came from
                for problem in problems:
                    if problem["path"].removeprefix("data.") in preset["preset_applied"]:
                        problem["message"] += f" (from the {req.preset} preset {preset['preset_id']})"
            raise ValidationFailed(f"{problems[0]['path']}: {problems[0]['message']}", problems)
        ref = ref or self.locator.resolve(req.model_id or s.default_model)
        if ref.base_model not in ("sdxl", "sd_1_5", "sd_2"):
            raise ValidationFailed(
                f"model {ref.model_id!r} is a {ref.base_model} model ({ref.pipeline_class}); {mode} supports sdxl, sd_1_5, sd_2",
                [{"path": "data.model_id", "message": "unsupported architecture"}],
            )
        device = self.runtime.check_device(req.device_id)
        roots = [r for r in (s.output_dir, *s.input_dirs) if r is not None]
        inputs, width, height = modes.prepare(mode, req.init_image, req.mask_image, req.width, req.height, roots)
        side = native_size(ref)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        paths = self.output.plan(req.output.save_path, session_id, req.num_images, req.output.format)
        return Plan(req, mode, ref, device, width or side, height or side, seed, paths, preset, choice, inputs)

    # ---- the job ---------------------------------------------------------------------------------

    def run(self, ctx: JobContext, plan: Plan) -> dict[str, Any]:
        t_start = time.perf_counter()
        req, perf = plan.req, ctx.session.performance
        rss = RssSampler()
        rss.sample()
        self.runtime.wait()
        device = self.runtime.device_name(self.runtime.check_device(plan.device))
        ctx.session.device_id = device
        ctx.set_status("loading")
        loaded, fresh = self.pipelines.get(plan.ref, device, self.runtime.dtype_name)
        pipe = self.pipelines.for_mode(loaded, plan.mode)
        perf["load_ms"] = loaded.load_ms if fresh else 0.0
        ctx.log(f"model {plan.ref.model_id} {'loaded' if fresh else 'already resident'}")
        ctx.check_cancelled()
        rss.sample()

        pipe.scheduler = self.pipelines.fresh_scheduler(loaded, plan.scheduler)
        ctx.set_status("running")
        torch = self.runtime.torch
        self.runtime.reset_peak(device)
        ctx.session.total_steps = req.steps
        t_inf = time.perf_counter()
        ctx.start_steps()
        with force_cancel_hooks(getattr(pipe, "unet", None), ctx), torch.inference_mode():
            out = pipe(
                **pipeline_prompt_kwargs(pipe, req.prompt, req.negative_prompt, req.clip_skip, req.prompt_syntax),
                **modes.call_kwargs(plan.mode, plan.inputs or modes.ModeInputs(), plan.width, plan.height, req.strength),
                num_inference_steps=req.steps,
                guidance_scale=req.guidance_scale,
                num_images_per_prompt=req.num_images,
                generator=generators(torch, plan.seed, req.num_images),
                callback_on_step_end=step_callback(ctx, rss.sample),
                output_type="pil",
            )
        inference_s = time.perf_counter() - t_inf
        loaded.runs += 1
        ctx.log(f"denoised {req.num_images} image(s) in {inference_s:.2f}s")

        ctx.set_status("postprocessing")
        params = self._effective(plan, pipe)
        images, encode_s, save_s = self._deliver(out.images, plan, params, ctx)
        rss.sample()
        steps_done = ctx.session.total_steps or req.steps
        perf.update(
            inference_ms=round(inference_s * 1000, 2),
            encode_ms=round(encode_s * 1000, 2),
            postprocess_ms=round(save_s * 1000, 2),
            steps_per_second=round(steps_done / inference_s, 3) if inference_s > 0 else 0.0,
            peak_vram_mb=self.runtime.peak_vram_mb(device),
            peak_rss_mb=rss.peak_mb,
        )
        perf["total_ms"] = round(perf.get("queue_ms", 0.0) + (time.perf_counter() - t_start) * 1000, 2)
        ctx.session.resources.update(peak_rss_mb=rss.peak_mb, peak_vram_mb=perf["peak_vram_mb"], device=device)
        return {
            "images": images,
            "parameters": params,
            "performance": dict(perf),
            "session_id": ctx.session.session_id,
            "warnings": [],
        }

    def _effective(self, plan: Plan, pipe: Any) -> dict[str, Any]:
        req = plan.req
        sched = type(pipe.scheduler).__name__
        extra: dict[str, Any] = {"strength": req.strength} if plan.mode != "text2img" else {}
        return {
            "mode": plan.mode,
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "model_id": plan.ref.model_id,
            "base_model": plan.ref.base_model,
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
            "device": self.runtime.device_name(plan.device),
            "dtype": self.runtime.dtype_name,
            "output": req.output.model_dump(),
            "version": f"sdworker {__version__}",
            **(plan.preset or {}),
        }

    def _deliver(self, pil_images: list[Any], plan: Plan, params: dict[str, Any], ctx: JobContext) -> tuple[list[dict[str, Any]], float, float]:
        fmt, opts = plan.req.output.format, plan.req.output
        images: list[dict[str, Any]] = []
        encode_s = save_s = 0.0
        for i, img in enumerate(pil_images):
            seed = plan.seed + i
            text = infotext({**params, "seed": seed})
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
                self.output.write_atomic(path, data)
                save_s += time.perf_counter() - t1
                entry["path"] = str(path)
                ctx.session.outputs.append(str(path))
            images.append(entry)
        return images, encode_s, save_s
