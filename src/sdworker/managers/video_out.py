"""Video results: frames -> mp4 (imageio-ffmpeg, H.264), a PNG poster, lossless PNG frames, atomic saves.

The mp4 is H.264 in yuv420p, which every player decodes; yuv420p halves the chroma resolution, so
width and height must be even (Wan sizes are multiples of 16, so they are). It is lossy: a host
that needs the exact pixels asks for ``output.frames`` (PNGs of the frames as generated). Saving
follows the image rules (managers.output): inside --output-dir, `<session>-<i>.mp4` by default,
an existing save_path is never replaced unless ``output.overwrite``, and files appear whole
(temp file, fsync, rename).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import WorkerError
from . import output

EXT = ".mp4"


def to_uint8(video: Any) -> Any:
    """A float video in [0, 1] (frames, H, W, 3) -> uint8, rounded as diffusers' numpy_to_pil rounds."""
    import numpy as np

    return (np.clip(video, 0.0, 1.0) * 255).round().astype(np.uint8)


def png(frame: Any) -> bytes:
    """One uint8 (H, W, 3) frame as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def encode_mp4(frames: Any, fps: int, quality: int = 80) -> bytes:
    """uint8 frames (N, H, W, 3) -> mp4 bytes (libx264, yuv420p, faststart).

    ffmpeg writes mp4 to a seekable file (the index goes at the end, then moves to the front), so
    it goes to a temporary file first. `quality` 1..100 maps to imageio-ffmpeg's 0..10 scale.
    """
    import imageio_ffmpeg

    count, height, width = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if width % 2 or height % 2:
        raise WorkerError(f"mp4 (yuv420p) needs an even width and height, not {width}x{height}", code="internal_error")
    with tempfile.TemporaryDirectory(prefix="sdworker-mp4-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        writer = imageio_ffmpeg.write_frames(
            path,
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=max(0.0, min(10.0, quality / 10)),
            macro_block_size=2,  # never resize: the size was checked above
            ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart"],
        )
        writer.send(None)  # start ffmpeg
        for i in range(count):
            writer.send(frames[i].tobytes())
        writer.close()
        with open(path, "rb") as fh:
            return fh.read()


def plan_paths(root: Path | None, save_path: str | None, session_id: str, count: int, overwrite: bool = False) -> list[Path | None]:
    """Where each video goes (None: not saved), by managers.output's rules; always an .mp4."""
    return output.plan_paths(root, save_path, session_id, count, EXT, overwrite, strict_ext=True)
