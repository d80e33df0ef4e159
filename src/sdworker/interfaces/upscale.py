"""inference.upscale: plan (decode and check the image, resolve the model) and run, as a job."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__, limits
from ..errors import ValidationFailed
from ..jobs.context import JobContext
from ..lazy import built_once
from ..managers.images_in import decode_image
from ..managers.output import OutputWriter, b64, encode, unique_names

if TYPE_CHECKING:
    from PIL import Image

    from ..managers.catalog import CatalogItem, ModelCatalog
    from ..managers.memory import MemoryManager
    from ..managers.runtime import Runtime
    from ..managers.upscale import UpscalerManager
    from ..schemas.postprocess import UpscaleRequest
    from ..settings import Settings


@dataclass
class UpscalePlan:
    req: UpscaleRequest
    session_id: str
    image: "Image.Image"
    item: "CatalogItem | None"  # None: Lanczos only
    device: str  # "default" or a device id (runtime.check_device)
    width: int  # of the result
    height: int
    path: Path | None
    exclusive: bool  # the save path must still be free when written


class UpscaleInterface:
    def __init__(self, settings: "Settings", runtime: "Runtime", memory: "MemoryManager", catalog: "ModelCatalog"):
        self.settings = settings
        self.runtime = runtime
        self.memory = memory
        self.catalog = catalog
        self.output = OutputWriter(settings.output_dir)

    @built_once
    def upscalers(self) -> "UpscalerManager":
        from ..managers.upscale import UpscalerManager  # on first use: the ready event never waits for it

        return UpscalerManager(self.memory, self.catalog, self.settings.allow_pickle)

    def device_name(self, plan: UpscalePlan) -> str:
        """The device the host sees: Lanczos alone runs on the CPU."""
        return self.runtime.device_name(plan.device) if plan.item is not None else "cpu"

    # ---- planning (on the worker lane, before queueing) --------------------------------------------

    def plan(self, req: UpscaleRequest, session_id: str) -> UpscalePlan:
        from ..managers.upscale import target_size

        s = self.settings
        item = self.upscalers.resolve(req.model, "model") if req.model is not None else None
        device = self.runtime.check_device(req.device_id)
        roots = [r for r in (s.output_dir, *s.input_dirs) if r is not None]
        image = decode_image(req.image, "image", roots)
        width, height = target_size(image.width, image.height, req.factor)
        max_pixels = limits.current().max_image_pixels
        if width * height > max_pixels:
            raise ValidationFailed(
                f"factor: the result would be {width}x{height}, over the limit of {max_pixels} pixels (--max-image-pixels)",
                [{"path": "factor", "message": f"result {width}x{height} is over {max_pixels} pixels"}],
            )
        opts = req.output
        path = self.output.plan(opts.save_path, session_id, 1, opts.format, opts.overwrite)[0]
        exclusive = opts.save_path is not None and not opts.overwrite
        return UpscalePlan(req, session_id, image, item, device, width, height, path, exclusive)

    def validate(self, req: UpscaleRequest, session_id: str) -> dict[str, Any]:
        """inference.validate_request's answer for an upscale request; raises WorkerError when invalid."""
        plan = self.plan(req, session_id)
        normalized = req.model_dump(mode="json")
        normalized.update(
            image=f"<{len(req.image)} chars>",
            model=plan.item.model_id if plan.item is not None else None,
            input_width=plan.image.width,
            input_height=plan.image.height,
            width=plan.width,
            height=plan.height,
            device_id=self.runtime.device_name(plan.device) if plan.item is not None else "cpu",
        )
        return {"valid": True, "errors": [], "normalized": normalized}

    # ---- the job ---------------------------------------------------------------------------------

    def run(self, ctx: JobContext, plan: UpscalePlan) -> dict[str, Any]:
        from ..managers.upscale import DEFAULT_TILE, upscale

        from ..managers.runtime import RssSampler

        t_start = time.perf_counter()
        req, perf = plan.req, ctx.session.performance
        rss = RssSampler()
        rss.sample()
        tile = DEFAULT_TILE if req.tile is None else req.tile
        params: dict[str, Any] = {
            "mode": "upscale",
            "factor": req.factor,
            "model": None,
            "upscaler": "Lanczos",
            "tile": tile,
            "input_width": plan.image.width,
            "input_height": plan.image.height,
            "width": plan.width,
            "height": plan.height,
        }

        def on_tile(done: int, total: int) -> None:
            ctx.progress(done, total)
            rss.sample()
            ctx.check_cancelled()

        ctx.check_cancelled()
        if plan.item is None:
            device = "cpu"
            ctx.set_status("running")
            t_inf = time.perf_counter()
            result = upscale(plan.image, req.factor)
            ctx.progress(1, 1)
            inference_s = time.perf_counter() - t_inf
            perf["loaded_from"] = None
        else:
            runtime = self.runtime
            runtime.wait()
            device = runtime.device_name(runtime.check_device(plan.device))
            ctx.session.device_id = device
            ctx.set_status("loading")
            with self.upscalers.use(plan.item, device) as (descriptor, info):
                perf["load_ms"] = info.ms
                perf["loaded_from"] = "disk" if info.fresh else "cache"
                ctx.log(f"upscaler {plan.item.model_id} ({descriptor.architecture.name}, x{descriptor.scale}) " + ("loaded" if info.fresh else "from the cache"))
                ctx.check_cancelled()
                ctx.set_status("running")
                runtime.reset_peak(device)
                ctx.start_steps()
                t_inf = time.perf_counter()
                result = upscale(plan.image, req.factor, descriptor, tile, on_tile)
                inference_s = time.perf_counter() - t_inf
                params.update(model=plan.item.model_id, upscaler=descriptor.architecture.name, model_scale=descriptor.scale)
        ctx.log(f"upscaled {plan.image.width}x{plan.image.height} to {result.width}x{result.height} in {inference_s:.2f}s")
        params.update(device=device, output=req.output.model_dump(), version=f"sdworker {__version__}")

        ctx.set_status("postprocessing")
        opts = req.output
        text = self.infotext(params)
        t0 = time.perf_counter()
        data = encode(result, opts.format, opts.quality, text)
        encode_s = time.perf_counter() - t0
        entry: dict[str, Any] = {"index": 0, "width": result.width, "height": result.height, "format": opts.format, "infotext": text}
        if opts.return_base64:
            entry["base64"] = b64(data)
        save_s = 0.0
        if plan.path is not None:
            t1 = time.perf_counter()
            path = self.output.write_atomic(plan.path, data, replace=not plan.exclusive, unique=unique_names(opts.save_path))
            save_s = time.perf_counter() - t1
            entry["path"] = str(path)
            ctx.session.outputs.append(str(path))
        rss.sample()
        perf.update(
            inference_ms=round(inference_s * 1000, 2),
            encode_ms=round(encode_s * 1000, 2),
            postprocess_ms=round(save_s * 1000, 2),
            peak_vram_mb=self.runtime.peak_vram_mb(device) if device.startswith("cuda") else None,
            peak_rss_mb=rss.peak_mb,
        )
        perf["total_ms"] = round(perf.get("queue_ms", 0.0) + (time.perf_counter() - t_start) * 1000, 2)
        ctx.session.resources.update(peak_rss_mb=rss.peak_mb, peak_vram_mb=perf["peak_vram_mb"], device=device)
        return {"images": [entry], "parameters": params, "performance": dict(perf), "session_id": plan.session_id, "warnings": []}

    @staticmethod
    def infotext(p: dict[str, Any]) -> str:
        """A1111's extras tab writes 'Postprocess upscale by: 2, Postprocess upscaler: <name>'."""
        upscaler = p["model"] or "Lanczos"
        return f"Postprocess upscale by: {p['factor']:g}, Postprocess upscaler: {upscaler}, Size: {p['width']}x{p['height']}, Version: {p['version']}"
