"""Encoding images and writing them: atomic files with the A1111 'parameters' text.

- PNG: a ``parameters`` text chunk (tEXt; iTXt when the text is not Latin-1, as Pillow does).
- JPEG and WebP: EXIF ``UserComment`` (UNICODE prefix + UTF-16BE) in the Exif sub-IFD, where
  A1111 writes it with piexif and where A1111's PNG Info, sd-parsers and sd-prompt-reader look.
- Files: written by sdworker.atomic (temp file in the same folder, fsynced, made readable as
  the umask says, 0o666 & ~umask as ``open()`` would, then given their name). Paths are absolute.
- Names: ``<session>-<i><ext>`` in the output dir. A session id that is not a safe file name as
  it is (sanitized or cut to 80 characters) gets a short hash of the raw id, so two ids never
  share a name; the worker's own names are created exclusively, and a name already taken (an
  earlier job, another run) gets a ``.<n>`` before the extension: a reported file is never
  overwritten.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
from pathlib import Path
from typing import Any

from .. import atomic
from ..paths import resolve_in_roots, safe_file_name
from ..errors import ValidationFailed, WorkerError

_EXT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
_NAME_LIMIT = 80


def encode(image: Any, fmt: str, quality: int, text: str) -> bytes:
    from PIL import PngImagePlugin

    buf = io.BytesIO()
    if fmt == "png":
        meta = PngImagePlugin.PngInfo()
        meta.add_text("parameters", text)
        image.save(buf, format="PNG", pnginfo=meta)
    elif fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality, exif=exif_user_comment(text))
    else:
        image.save(buf, format="WEBP", quality=quality, exif=exif_user_comment(text))
    return buf.getvalue()


def exif_user_comment(text: str) -> bytes:
    """EXIF holding only ``UserComment`` in the Exif sub-IFD: what A1111 writes with piexif
    (``{"Exif": {UserComment: UserComment.dump(text, encoding="unicode")}}``).

    A little-endian TIFF: IFD0 with one entry (the Exif IFD pointer, 0x8769), the Exif IFD with one
    entry (UserComment, 0x9286, type UNDEFINED), then the comment. Pillow's own Exif writer stores
    the comment as BYTE, which piexif (A1111's reader) does not decode.
    """
    comment = b"UNICODE\x00" + text.encode("utf-16-be", "replace")
    ifd_size = 2 + 12 + 4  # entry count, one entry, next-IFD offset
    exif_ifd = 8 + ifd_size
    data_at = exif_ifd + ifd_size
    tiff = b"II*\x00" + struct.pack("<I", 8)
    tiff += struct.pack("<HHHII", 1, 0x8769, 4, 1, exif_ifd) + struct.pack("<I", 0)
    tiff += struct.pack("<HHHII", 1, 0x9286, 7, len(comment), data_at) + struct.pack("<I", 0)
    return b"Exif\x00\x00" + tiff + comment


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def file_stem(session_id: str) -> str:
    """The session's file-name stem: the id itself when it is a safe name of at most 80 characters,
    else its safe form cut short plus 8 hex digits of the raw id's SHA-256 (``coll a`` and
    ``coll/a`` both sanitize to ``coll_a``; their stems differ)."""
    safe = safe_file_name(session_id, _NAME_LIMIT)
    if safe == session_id:
        return safe
    digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe[: _NAME_LIMIT - 9]}-{digest}"


def plan_paths(
    root: Path | None, save_path: str | None, session_id: str, count: int, ext: str, overwrite: bool = False, strict_ext: bool = False
) -> list[Path | None]:
    """Where each of `count` outputs goes (None: not saved), inside `root` (the output dir); absolute.

    A `save_path` never replaces an existing file unless `overwrite`; the worker's own names
    (`<session>-<i><ext>` in the output dir) are made unique when written (``unique_names``).
    `strict_ext`: a save_path with another extension is refused (a video is always an .mp4).
    """
    if save_path is None and root is None:
        return [None] * count
    if root is None:
        raise ValidationFailed(
            "output.save_path needs an output root: start the worker with --output-dir",
            [{"path": "output.save_path", "message": "no --output-dir configured"}],
        )
    root = Path(os.path.abspath(root))
    if save_path is None:
        return [root / f"{file_stem(session_id)}-{i}{ext}" for i in range(count)]
    target = resolve_in_roots(save_path, [root], "output.save_path")
    if save_path.endswith(("/", os.sep)) or target.is_dir():
        paths = [target / f"{file_stem(session_id)}-{i}{ext}" for i in range(count)]
    else:
        if not target.suffix:
            target = target.with_suffix(ext)
        elif strict_ext and target.suffix.lower() != ext:
            msg = f"{target.name}: this output is saved as {ext}"
            raise ValidationFailed(f"output.save_path: {msg}", [{"path": "output.save_path", "message": msg}])
        paths = [target] if count == 1 else [target.with_name(f"{target.stem}-{i}{target.suffix}") for i in range(count)]
    if not overwrite:
        taken = [p for p in paths if os.path.lexists(p)]
        if taken:
            raise exists_error(taken[0])
    return list(paths)


def unique_names(save_path: str | None) -> bool:
    """The worker named the files itself (no save_path): a taken name gets a suffix, never replaced."""
    return save_path is None


class OutputWriter:
    def __init__(self, output_dir: Path | None):
        self.root = output_dir

    def plan(self, save_path: str | None, session_id: str, count: int, fmt: str, overwrite: bool = False) -> list[Path | None]:
        """Where each image goes (None: not saved). Checked before any work is done."""
        return plan_paths(self.root, save_path, session_id, count, _EXT[fmt], overwrite)

    @staticmethod
    def write_atomic(path: Path, data: bytes, replace: bool = True, unique: bool = False) -> Path:
        """Write the image atomically (sdworker.atomic); returns the path written.

        replace=False: the file must not exist yet (a clash is a validation error naming it).
        unique=True: a taken name is no error, the next free ``<stem>.<n><ext>`` is used.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkerError(f"cannot write to {path.parent}: {exc.strerror or exc}", code="internal_error") from exc
        try:
            return atomic.write_atomic(path, data, replace=replace, unique=unique)
        except atomic.NameTaken:
            raise exists_error(path) from None
        except OSError as exc:
            raise WorkerError(f"cannot write {path}: {exc.strerror or exc}", code="internal_error") from exc


def exists_error(path: Path) -> ValidationFailed:
    msg = f"{path.name} already exists; choose another save_path or set output.overwrite"
    return ValidationFailed(f"output.save_path: {msg}", [{"path": "output.save_path", "message": msg}])
