"""Video generation (inference.text2video, inference.img2video): plan a request, then run it as a job.

It walks the image path (interfaces.generation) with video parts: the model resolves through the
same locator and presets, its family (families.wan) checks the request and makes the call's
arguments, the pipeline comes from the same PipelineManager cache, and video i draws its noise
from its own CPU generator seeded with seed + i (managers.denoise.generators), so the frames
equal plain diffusers' with the same generators. Progress is reported at every denoising step and
a cancel stops the job at the next step end; a force cancel or a timeout stops it inside a step
(pre-hooks on the transformer blocks of both Wan 2.2 experts). The frames become an mp4, a PNG
poster and, on request, lossless PNG frames (managers.video_out).
"""

from __future__ import annotations

import inspect
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import ValidationFailed
from ..families import Family, for_base_model
from ..families.wan import (
    DEFAULT_FPS,
    DEFAULT_FRAMES,
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    WanFamily,
    WanModel,
    WanSampler,
    build_scheduler,
    read_model,
    sampler_choice,
)
from ..managers import optimize, precision, video_out, weights
from ..managers.denoise import generators
from ..managers.images_in import decode_image
from ..managers.locator import ModelRef
from ..managers.output import OutputWriter, b64, unique_names
from ..managers.pipelines import LoadedPipeline
from ..managers.runner import Steps, ran
from ..managers.runtime import RssSampler
from ..schemas.video import VideoRequest
from .generation_output import finish_job, start_job
from .generation_plan import blame_preset, limit_problems, worker_keeps

if TYPE_CHECKING:
    from ..jobs.context import JobContext
    from .generation import GenerationInterface

VIDEO_METHODS = {"inference.text2video": "text2video", "inference.img2video": "img2video"}


def _invalid(problems: list[dict[str, str]]) -> ValidationFailed:
    return ValidationFailed(f"{problems[0]['path']}: {problems[0]['message']}", problems)


@dataclass
class VideoPlan:
    """A validated video request with everything resolved that can be resolved before loading."""

    req: VideoRequest
    mode: str  # text2video or img2video
    ref: ModelRef
    model: WanModel
    family: Family
    device: str
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int
    paths: list[Path | None]
    sampler: WanSampler | None = None  # None: the model's own scheduler
    image: Any = None  # img2video: the first frame, PIL RGB at width x height
    flow_shift: float | None = None  # None: the model's scheduler config
    preset: dict[str, Any] | None = None
    dtype: str | None = None  # None: the worker's dtype
    exclusive: bool = False  # the save paths must still be free when written
    warnings: list[str] = field(default_factory=list)

    @property
    def scheduler(self) -> WanSampler | None:
        """What inference.validate_request reads of a plan (generation plans call it scheduler)."""
        return self.sampler


class VideoInterface:
    """Plans and runs video jobs over the generation interface's services (locator, presets, pipelines)."""

    def __init__(self, generation: GenerationInterface):
        self.gen = generation
        self.settings = generation.settings
        self.runtime = generation.runtime
        self.locator = generation.locator
        self.pipelines = generation.pipelines
        self.presets = generation.presets

    # ---- planning (runs inline, before queueing) -------------------------------------------------

    def plan(self, req: VideoRequest, mode: str, session_id: str) -> VideoPlan:
        s = self.settings
        ref = self.locator.resolve(req.model_id or s.default_model)
        family = for_base_model(ref.base_model)
        if not isinstance(family, WanFamily):
            msg = f"{ref.model_id} is a {ref.base_model} model ({ref.pipeline_class}); {mode} needs a Wan video model (wan_2_1, wan_2_2)"
            raise _invalid([{"path": "data.model_id", "message": msg}])
        preset: dict[str, Any] | None = None
        if req.preset is not None and self.presets is not None:
            req, preset = self.presets.for_request(req, ref, worker_keeps(s))  # type: ignore[assignment]
            if req.scheduler is None and req.sampler is None and preset.get("preset_sampler"):
                req = req.model_copy(update={"sampler": preset["preset_sampler"], "scheduler": preset.get("preset_scheduler")})
            if req.flow_shift is None:
                shift = self._preset_shift(req, ref, preset)
                req = req.model_copy(update={"flow_shift": shift}) if shift is not None else req
        problems = limit_problems(req, s)
        checked = family.check(req, mode, ref)
        problems.extend(checked.problems)
        if problems:
            raise _invalid(blame_preset(problems, req, preset))
        req = checked.req  # type: ignore[assignment]
        warnings = list(checked.warnings)
        if req.preview:
            warnings.append("preview ignored: progress previews are for images; video jobs report steps only")
        if "strength" in req.model_fields_set:
            warnings.append("strength ignored: Wan video models take none (img2video keeps the init image as the first frame)")
        model = read_model(ref)
        device = self.runtime.check_device(req.device_id)
        dtype = None if req.precision.dtype == "auto" else req.precision.dtype
        precision.check(req.precision, self.gen._known_device(device), dtype or self.runtime.dtype_name, [], ref.weights_format)
        image, width, height = self._frame_and_size(req, mode, model)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        paths = video_out.plan_paths(s.output_dir, req.output.save_path, session_id, req.num_images, req.output.overwrite)
        return VideoPlan(
            req, mode, ref, model, family, device, width, height,
            num_frames=req.num_frames if req.num_frames is not None else DEFAULT_FRAMES,
            fps=req.fps or DEFAULT_FPS, seed=seed, paths=paths, sampler=sampler_choice(req), image=image, preset=preset,
            dtype=dtype, exclusive=req.output.save_path is not None and not req.output.overwrite, warnings=warnings,
            flow_shift=req.flow_shift,
        )

    def _preset_shift(self, req: VideoRequest, ref: ModelRef, preset: dict[str, Any] | None) -> float | None:
        """The preset's `model_specific_params.shift` (480P and 720P want different shifts), when a preset applied."""
        if preset is None or self.presets is None or req.preset is None:
            return None
        doc = self.presets.resolve(req.preset, model_id=ref.model_id, base_model=ref.base_model)
        shift = (doc.get("model_specific_params") or {}).get("shift")
        if isinstance(shift, (int, float)) and not isinstance(shift, bool) and shift > 0:
            preset["preset_applied"] = {**preset["preset_applied"], "flow_shift": float(shift)}
            return float(shift)
        return None

    def _frame_and_size(self, req: VideoRequest, mode: str, model: WanModel) -> tuple[Any, int, int]:
        """img2video's first frame (resized to the video size) and the video size.

        Without width/height an img2video takes the image's size rounded down to the model's
        multiple; a text2video takes the released models' 832x480.
        """
        s = self.settings
        if mode != "img2video":
            return None, req.width or DEFAULT_WIDTH, req.height or DEFAULT_HEIGHT
        roots = [r for r in (s.output_dir, *s.input_dirs) if r is not None]
        assert req.init_image is not None  # the family's check asked for it
        image = decode_image(req.init_image, "data.init_image", roots, "RGB")
        m = model.size_multiple
        width = req.width or max(m, image.width // m * m)
        height = req.height or max(m, image.height // m * m)
        if max(width, height) > s.max_resolution:
            msg = f"the video size {width}x{height} (from the init image) is over the limit of {s.max_resolution}; send width and height"
            raise _invalid([{"path": "data.init_image", "message": msg}])
        if image.size != (width, height):
            from PIL import Image

            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image, width, height

    # ---- the job -----------------------------------------------------------------------------------

    def run(self, ctx: JobContext, plan: VideoPlan) -> dict[str, Any]:
        t_start, perf, rss, device, dtype, warnings = start_job(ctx, self.runtime, plan)
        with self.pipelines.use(plan.ref, device, dtype, weights.weights_of(plan.req.precision)) as (loaded, report):
            ctx.log(f"model {plan.ref.model_id} " + (f"loaded ({report.disk_reads} component(s) read from disk)" if report.fresh else "from the cache"))
            perf["load_ms"] = round(report.ms, 2)
            perf["loaded_from"] = "disk" if report.fresh else "cache"
            pipe = self._mode_pipeline(loaded, plan.mode)
            pipe.scheduler = build_scheduler(plan.sampler, loaded.scheduler_class or type(pipe.scheduler), loaded.scheduler_config, plan.flow_shift)
            video, inference_s = self.gen.runner.retrying(
                ctx,
                lambda warning: self._attempt(ctx, plan, loaded, pipe, rss, warnings, warning),
                pipe,
                loaded.device,
                list(loaded.keys.values()),
                lambda why: (
                    f"out of memory generating {plan.num_frames} frames at {plan.width}x{plan.height}, also in low-memory mode "
                    f"({why}); lower num_frames, width/height or num_images"
                ),
            )
            loaded.runs += 1
            params = self._effective(plan, pipe, dtype)
        ctx.set_status("postprocessing")
        videos, encode_s, save_s = self._deliver(video, plan, ctx)
        steps = ran(pipe) or plan.req.steps
        finish_job(ctx, self.runtime, rss, device, t_start, steps, inference_s, encode_s, save_s)
        return {"videos": videos, "parameters": params, "performance": dict(perf), "session_id": ctx.session.session_id, "warnings": warnings}

    def _attempt(
        self, ctx: JobContext, plan: VideoPlan, loaded: LoadedPipeline, pipe: Any, rss: RssSampler, warnings: list[str], warning: str | None
    ) -> tuple[Any, float]:
        """The denoising; the out-of-memory retry (`warning` set) starts again from a fresh scheduler."""
        if warning is not None:
            warnings.append(warning)
            pipe.scheduler = build_scheduler(plan.sampler, loaded.scheduler_class or type(pipe.scheduler), loaded.scheduler_config, plan.flow_shift)
        return self._denoise(ctx, plan, loaded, pipe, rss)

    @staticmethod
    def _mode_pipeline(loaded: LoadedPipeline, mode: str) -> Any:
        """The model's own pipeline, or (img2video on a TI2V model) WanImageToVideoPipeline over its components.

        Built directly rather than with from_pipe, which would cast every component to fp32.
        """
        pipe = loaded.pipe
        if mode == "text2video" or type(pipe).__name__ == "WanImageToVideoPipeline":
            return pipe
        if mode in loaded.modes:
            return loaded.modes[mode]
        from diffusers import WanImageToVideoPipeline

        accepted = inspect.signature(WanImageToVideoPipeline.__init__).parameters
        parts = {k: v for k, v in pipe.components.items() if k in accepted}
        i2v = WanImageToVideoPipeline(**parts, boundary_ratio=pipe.config.boundary_ratio, expand_timesteps=pipe.config.expand_timesteps)
        i2v.set_progress_bar_config(disable=True)
        loaded.modes[mode] = i2v
        return i2v

    def _denoise(self, ctx: JobContext, plan: VideoPlan, loaded: LoadedPipeline, pipe: Any, rss: RssSampler) -> tuple[Any, float]:
        """The pipeline call: (videos as floats (n, frames, H, W, 3) in [0, 1], seconds)."""
        req, torch = plan.req, self.runtime.torch
        ctx.check_cancelled()
        rss.sample()
        ctx.set_status("running")
        self.runtime.reset_peak(loaded.device)
        ctx.session.total_steps = req.steps
        kwargs: dict[str, Any] = {
            **plan.family.prompt_kwargs(pipe, req),
            **plan.family.call_kwargs(req, plan),
            **plan.family.mode_kwargs(plan),
            "num_inference_steps": req.steps,
            "num_videos_per_prompt": req.num_images,
            "generator": generators(torch, plan.seed, req.num_images),
            "output_type": "np",
        }
        if plan.mode == "img2video":
            kwargs["image"] = plan.image

        runner = self.gen.runner
        t0 = time.perf_counter()
        ctx.start_steps()
        with runner.settings([pipe], req.precision):
            out = runner.call(
                ctx, pipe, kwargs, Steps(lambda n: n or req.steps), rss=rss, request=req, device=loaded.device,
                offload=runner.offload_mode(loaded, req.precision), keys=list(loaded.keys.values()),
            )
        seconds = time.perf_counter() - t0
        ctx.log(f"denoised {req.num_images} video(s) of {plan.num_frames} frames in {seconds:.2f}s")
        return out.frames, seconds

    def _effective(self, plan: VideoPlan, pipe: Any, dtype: str) -> dict[str, Any]:
        """The result's `parameters`: the values the run used."""
        req = plan.req
        return {
            "mode": plan.mode,
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            **plan.ref.describe(),
            "width": plan.width,
            "height": plan.height,
            "fps": plan.fps,
            "steps": req.steps,
            "guidance_scale": req.guidance_scale,
            **plan.family.effective(req, plan),
            "prompt_syntax": req.prompt_syntax,
            "seed": plan.seed,
            "num_images": req.num_images,
            "scheduler": type(pipe.scheduler).__name__,
            "flow_shift": float(pipe.scheduler.config.get("flow_shift", pipe.scheduler.config.get("shift", 1.0))),
            "sampler": plan.sampler.id if plan.sampler else "default",
            "sampler_name": plan.sampler.display_name if plan.sampler else type(pipe.scheduler).__name__,
            "device": self.runtime.device_name(plan.device),
            "dtype": dtype,
            "precision": {**req.precision.model_dump(), "dtype": dtype},
            "optimize": optimize.parameters(pipe, req.optimize, self.settings.optimize),
            "output": req.output.model_dump(),
            "version": f"sdworker {__version__}",
            **(plan.preset or {}),
        }

    def _deliver(self, video: Any, plan: VideoPlan, ctx: JobContext) -> tuple[list[dict[str, Any]], float, float]:
        """Each video as mp4 (+ poster, + frames when asked), saved when the plan has paths."""
        opts = plan.req.output
        out: list[dict[str, Any]] = []
        encode_s = save_s = 0.0
        for i in range(len(video)):
            t0 = time.perf_counter()
            frames = video_out.to_uint8(video[i])
            count, height, width = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
            data = video_out.encode_mp4(frames, plan.fps, opts.quality)
            entry: dict[str, Any] = {
                "index": i,
                "seed": plan.seed + i,
                "format": "mp4",
                "fps": plan.fps,
                "num_frames": count,
                "width": width,
                "height": height,
                "poster": b64(video_out.png(frames[0])),
            }
            if opts.return_base64:
                entry["base64"] = b64(data)
            if opts.frames:
                entry["frames"] = [b64(video_out.png(f)) for f in frames]
            encode_s += time.perf_counter() - t0
            path = plan.paths[i] if i < len(plan.paths) else None
            if path is not None:
                t1 = time.perf_counter()
                path = OutputWriter.write_atomic(path, data, replace=not plan.exclusive, unique=unique_names(opts.save_path))
                save_s += time.perf_counter() - t1
                entry["path"] = str(path)
                ctx.session.outputs.append(str(path))
            out.append(entry)
        return out, encode_s, save_s

