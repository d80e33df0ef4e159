"""Encoding images and writing them: atomic files with the A1111 'parameters' text chunk."""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from ..paths import resolve_in_roots, safe_file_name
from ..errors import ValidationFailed, WorkerError

_EXT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def infotext(p: dict[str, Any]) -> str:
    """A1111's 'parameters' text: prompt, negative prompt, then 'Key: value' pairs."""
    lines = [p.get("prompt", "")]
    if p.get("negative_prompt"):
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    hires = p.get("hires") or {}
    refiner = p.get("refiner") or {}
    pairs = [
        ("Steps", p.get("steps")),
        ("Sampler", p.get("sampler_name")),
        ("CFG scale", p.get("guidance_scale")),
        ("Seed", p.get("seed")),
        ("Size", f"{p.get('width')}x{p.get('height')}"),
        ("Model", p.get("model_id")),
        ("VAE", p.get("vae") if p.get("vae") not in (None, "model") else None),
        ("Denoising strength", p.get("strength", hires.get("denoise"))),
        ("Clip skip", p.get("clip_skip") if (p.get("clip_skip") or 1) > 1 else None),
        ("Hires upscale", hires.get("scale") if hires and not hires.get("resize") else None),
        ("Hires resize", hires.get("resize")),
        ("Hires steps", hires.get("steps")),
        ("Hires upscaler", hires.get("upscaler_name")),
        ("Refiner", refiner.get("model")),
        ("Refiner switch at", refiner.get("switch_at")),
        ("Version", p.get("version")),
    ]
    lines.append(", ".join(f"{k}: {_fmt(v)}" for k, v in pairs if v is not None))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def encode(image: Any, fmt: str, quality: int, text: str) -> bytes:
    from PIL import PngImagePlugin

    buf = io.BytesIO()
    if fmt == "png":
        meta = PngImagePlugin.PngInfo()
        meta.add_text("parameters", text)
        image.save(buf, format="PNG", pnginfo=meta)
    elif fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality, exif=_exif_comment(image, text))
    else:
        image.save(buf, format="WEBP", quality=quality, exif=_exif_comment(image, text))
    return buf.getvalue()


def _exif_comment(image: Any, text: str) -> bytes:
    """A1111 keeps infotext for JPEG/WebP in EXIF UserComment (UNICODE-prefixed)."""
    exif = image.getexif()
    exif[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")
    return exif.tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def plan_paths(
    root: Path | None, save_path: str | None, session_id: str, count: int, ext: str, overwrite: bool = False, strict_ext: bool = False
) -> list[Path | None]:
    """Where each of `count` outputs goes (None: not saved), inside `root` (the output dir).

    A `save_path` never replaces an existing file unless `overwrite`; the worker's own names
    (`<session>-<i><ext>` in the output dir) are its files and are replaced. `strict_ext`: a
    save_path with another extension is refused (a video is always an .mp4).
    """
    if save_path is None and root is None:
        return [None] * count
    if root is None:
        raise ValidationFailed(
            "output.save_path needs an output root: start the worker with --output-dir",
            [{"path": "data.output.save_path", "message": "no --output-dir configured"}],
        )
    if save_path is None:
        stem = root / safe_file_name(session_id)
        return [stem.with_name(f"{stem.name}-{i}{ext}") for i in range(count)]
    target = resolve_in_roots(save_path, [root], "data.output.save_path")
    if save_path.endswith(("/", os.sep)) or target.is_dir():
        paths = [target / f"{safe_file_name(session_id)}-{i}{ext}" for i in range(count)]
    else:
        if not target.suffix:
            target = target.with_suffix(ext)
        elif strict_ext and target.suffix.lower() != ext:
            msg = f"{target.name}: this output is saved as {ext}"
            raise ValidationFailed(f"data.output.save_path: {msg}", [{"path": "data.output.save_path", "message": msg}])
        paths = [target] if count == 1 else [target.with_name(f"{target.stem}-{i}{target.suffix}") for i in range(count)]
    if not overwrite:
        taken = [p for p in paths if os.path.lexists(p)]
        if taken:
            raise exists_error(taken[0])
    return list(paths)


class OutputWriter:
    def __init__(self, output_dir: Path | None):
        self.root = output_dir

    def plan(self, save_path: str | None, session_id: str, count: int, fmt: str, overwrite: bool = False) -> list[Path | None]:
        """Where each image goes (None: not saved). Checked before any work is done."""
        return plan_paths(self.root, save_path, session_id, count, _EXT[fmt], overwrite)

    @staticmethod
    def write_atomic(path: Path, data: bytes, replace: bool = True) -> None:
        """Temp file in the same folder, fsync, rename: a reader never sees half an image.

        replace=False: the file must not exist yet. The temp file is hard-linked to its name,
        which fails atomically when something else took the name meanwhile (on file systems
        without hard links: checked, then renamed). No temp file is left behind either way.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        except OSError as exc:
            raise WorkerError(f"cannot write to {path.parent}: {exc.strerror or exc}", code="internal_error") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                _link_new(tmp, path)
        except OSError as exc:
            raise WorkerError(f"cannot write {path}: {exc.strerror or exc}", code="internal_error") from exc
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # renamed into place (or never written)


def exists_error(path: Path) -> ValidationFailed:
    msg = f"{path.name} already exists; choose another save_path or set output.overwrite"
    return ValidationFailed(f"data.output.save_path: {msg}", [{"path": "data.output.save_path", "message": msg}])


def _link_new(tmp: str, path: Path) -> None:
    """Give the finished temp file the name `path`, which must not exist (the temp is unlinked after)."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise exists_error(path) from None
    except OSError:
        pass  # no hard links here (some network and FAT file systems)
    if os.path.lexists(path):
        raise exists_error(path)
    os.replace(tmp, path)
