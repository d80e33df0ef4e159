"""Video requests (inference.text2video, inference.img2video) and their results (contract section 6)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..errors import ValidationFailed
from .base import JobResult, Result
from .generation import GenerationRequest, OutputOptions, Performance
from .normalize import normalize_generation
from .postprocess import PostProcessStep  # noqa: F401  (resolves GenerationRequest.post_processing's forward reference here)

# alias -> canonical field, after the image request's own aliases (normalize.ALIASES)
VIDEO_ALIASES: dict[str, str] = {
    "image": "init_image",
    "video_fps": "fps",
    "frame_rate": "fps",
    "num_videos": "num_images",
    "guidance_scale2": "guidance_scale_2",  # GuidanceScale2 / guidanceScale2 after protocol.keys
}


class VideoOutputOptions(OutputOptions):
    """How videos come back: mp4 (H.264, yuv420p) plus a PNG poster; frames adds every frame as a PNG."""

    format: Literal["mp4"] = Field(default="mp4", description="mp4 (H.264 in yuv420p, through imageio-ffmpeg)")  # type: ignore[assignment]
    quality: int = Field(default=80, ge=1, le=100, description="mp4 quality, 1..100 (imageio-ffmpeg's 0..10 scale x 10)")
    frames: bool = Field(default=False, description="also return every frame, lossless, as videos[i].frames: a list of base64 PNGs")


class VideoRequest(GenerationRequest):
    """A generation request plus what a video needs; image-only fields are refused by the model's family."""

    num_frames: int | None = Field(default=None, ge=1, le=1025, description="frames of the video, 4k+1 on Wan; default 81")
    fps: int | None = Field(default=None, ge=1, le=120, description="frames per second of the mp4 (alias video_fps); default 16")
    guidance_scale_2: float | None = Field(
        default=None, ge=0.0, le=100.0,
        description="Wan 2.2 two-expert models: guidance of the low-noise expert (transformer_2); default guidance_scale",
    )
    flow_shift: float | None = Field(
        default=None, gt=0.0, le=100.0,
        description="the flow-matching sigma shift of the sampler; default: the preset's shift, else the model's scheduler config "
        "(Wan: 3.0 for 480P, 5.0 for 720P)",
    )
    output: VideoOutputOptions = Field(default_factory=VideoOutputOptions)  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        data = normalize_generation(data)
        if not isinstance(data, dict):
            return data
        problems: list[dict[str, str]] = []
        for alias, canonical in VIDEO_ALIASES.items():
            if alias not in data:
                continue
            value = data.pop(alias)
            if canonical in data and data[canonical] != value:
                problems.append({"path": alias, "message": f"conflicts with {canonical} ({value!r} vs {data[canonical]!r})"})
                continue
            data[canonical] = value
        if problems:
            raise ValidationFailed(f"{problems[0]['path']}: {problems[0]['message']}", problems, rooted=True)
        return data


class VideoEntry(Result):
    index: int
    seed: int
    format: str = "mp4"
    fps: int
    num_frames: int
    width: int
    height: int
    base64: str | None = Field(default=None, description="the mp4 (unless output.return_base64 is false)")
    path: str | None = Field(default=None, description="where the mp4 was saved")
    poster: str = Field(description="the first frame, base64 PNG")
    frames: list[str] | None = Field(default=None, description="with output.frames: every frame, base64 PNG (lossless)")


class VideoResult(JobResult):
    videos: list[VideoEntry]
    parameters: dict[str, Any]
    performance: Performance
    session_id: str
    warnings: list[str] = Field(default_factory=list)
