"""inference.text2video and inference.img2video: video generation jobs (Wan 2.1 / 2.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..dispatch.registry import method
from ..dispatch.work import Work
from ..protocol.envelopes import Call

if TYPE_CHECKING:
    from ..interfaces.video import VideoInterface
    from ..interfaces.worker import WorkerInterface
    from ..schemas.video import VideoRequest, VideoResult  # noqa: F401


class VideoInstructor:
    def __init__(self, video: Callable[[], "VideoInterface"], worker: "WorkerInterface"):
        self._video = video
        self.worker = worker

    @method("inference.text2video", "video:VideoRequest", "video:VideoResult", job=True)
    def text2video(self, params: VideoRequest, call: Call) -> Work:
        """Generate videos from a prompt (Wan text-to-video): mp4 + poster, num_frames 4k+1, fps."""
        return self._work(params, call, "text2video")

    @method("inference.img2video", "video:VideoRequest", "video:VideoResult", job=True)
    def img2video(self, params: VideoRequest, call: Call) -> Work:
        """Animate an image (init_image, alias image: the first frame) with a Wan image-to-video model."""
        return self._work(params, call, "img2video")

    def _work(self, req: VideoRequest, call: Call, mode: str) -> Work:
        session_id = req.session_id or call.session_id or call.request_id
        call.session_id = session_id
        video = self._video()
        plan = video.plan(req, mode, session_id)
        return Work(
            run=lambda ctx: video.run(ctx, plan),
            model_id=plan.ref.model_id,
            device_id=self.worker.device_name(plan.device),
            executor="default",  # the one queue of the one model cache: never beside an image job
            preview=req.preview,
        )
