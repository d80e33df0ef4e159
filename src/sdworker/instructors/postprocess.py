"""inference.upscale: upscale an image with an ESRGAN-family model and/or Lanczos, as a job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..dispatch.registry import method
from ..dispatch.work import Work
from ..protocol.envelopes import Call

if TYPE_CHECKING:
    from ..interfaces.upscale import UpscaleInterface
    from ..schemas.postprocess import UpscaleRequest, UpscaleResult  # noqa: F401


class PostprocessInstructor:
    def __init__(self, upscale: Callable[[], "UpscaleInterface"]):
        self._upscale = upscale

    @method("inference.upscale", "postprocess:UpscaleRequest", "postprocess:UpscaleResult", job=True)
    def upscale(self, params: UpscaleRequest, call: Call) -> Work:
        """Upscale one image by factor with an upscaler model (ESRGAN family, tiled) and/or Lanczos."""
        session_id = params.session_id or call.session_id or call.request_id
        call.session_id = session_id
        ups = self._upscale()
        plan = ups.plan(params, session_id)
        return Work(
            run=lambda ctx: ups.run(ctx, plan),
            model_id=plan.item.model_id if plan.item is not None else None,
            device_id=ups.device_name(plan),
            executor="default",  # the device queue generations use: one job on the GPU at a time
        )
