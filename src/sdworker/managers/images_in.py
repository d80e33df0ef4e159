"""Images in requests: base64 (with or without a data: prefix) or a path inside an allowed root."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

from .. import limits
from ..paths import resolve_in_roots
from ..errors import ValidationFailed

MAX_PIXELS = limits.DEFAULT_MAX_IMAGE_PIXELS  # the default; --max-image-pixels (limits.current()) rules
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", [{"path": field, "message": message}])


def _check_size(size: int, field: str) -> None:
    limit = limits.current().max_image_bytes
    if size > limit:
        raise _bad(field, f"image is {size} bytes, over the limit of {limit} (--max-image-bytes)")


def image_bytes(value: str, field: str, roots: list[Path]) -> bytes:
    """The encoded bytes of an image given as base64, a data: URL, or a path inside `roots`."""
    text = value.strip()
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise _bad(field, "data: URLs must be base64-encoded")
    elif len(text) < 4096 and text.lower().endswith(_IMAGE_EXTENSIONS):
        path = resolve_in_roots(text, roots, field)
        try:
            _check_size(path.stat().st_size, field)
            return path.read_bytes()
        except OSError as exc:
            raise _bad(field, f"cannot read {text!r}: {exc.strerror or exc}") from None
    _check_size(limits.base64_decoded_size(text), field)  # before decoding: no 1 GB buffer for a refusal
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise _bad(field, f"not valid base64: {exc}") from None


def decode_image(value: str, field: str, roots: list[Path], mode: str = "RGB") -> Any:
    """Open, verify and convert an input image; every failure names the field."""
    from PIL import Image

    max_pixels = limits.current().max_image_pixels
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's own guard (it raises only past twice this)
    data = image_bytes(value, field, roots)
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            w, h = probe.size
            if w * h > max_pixels:  # refused before any pixel is decoded
                raise _bad(field, f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (--max-image-pixels)")
            probe.verify()
        img = Image.open(io.BytesIO(data))
        img.load()
    except ValidationFailed:
        raise
    except Image.DecompressionBombError:
        raise _bad(field, f"image is larger than {max_pixels} pixels (--max-image-pixels)") from None
    except Exception as exc:  # PIL raises many types for corrupt input
        raise _bad(field, f"not a readable image ({type(exc).__name__})") from None
    return img.convert(mode)
