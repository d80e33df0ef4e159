"""A generation job's opening and close, and its results: parameters, infotext hashes, encoded images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..managers import infotext, optimize, precision, schedulers
from ..managers.output import OutputWriter, b64, encode, unique_names
from ..managers.runtime import RssSampler, Runtime
from ..settings import Settings
from .generation_load import RunPipes
from .generation_plan import Plan

if TYPE_CHECKING:
    from ..jobs.context import JobContext


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


class GenerationOutput:
    """GenerationInterface's results: the `parameters` a run used, and the images delivered."""

    settings: Settings
    runtime: Runtime
    output: OutputWriter

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
        extra["optimize"] = optimize.parameters(pipe, req.optimize, self.settings.optimize, optimize.has_lora(req))
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
