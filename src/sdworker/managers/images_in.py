"""Images in requests: base64 (with or without a data: prefix) or a path inside an allowed root."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import limits
from ..errors import ValidationFailed
from ..paths import FileTooLarge, read_regular, resolve_in_roots

MAX_PIXELS = limits.DEFAULT_MAX_IMAGE_PIXELS  # the default; --max-image-pixels (limits.current()) rules
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", [{"path": field, "message": message}])


def _check_size(size: int, field: str) -> None:
    limit = limits.current().max_image_bytes
    if size > limit:
        raise _bad(field, f"image is {size} bytes, over the limit of {limit} (--max-image-bytes)")


def image_bytes(value: str, field: str, roots: list[Path]) -> bytes:
    """The encoded bytes of an image given as base64, a data: URL, or a path inside `roots`.

    A path is read only when it names a regular file (a FIFO, device or folder is refused at
    once, never waited on) of at most --max-image-bytes.
    """
    text = value.strip()
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise _bad(field, "data: URLs must be base64-encoded")
    elif len(text) < 4096 and text.lower().endswith(_IMAGE_EXTENSIONS):
        path = resolve_in_roots(text, roots, field)
        try:
            return read_regular(path, limits.current().max_image_bytes)
        except FileTooLarge as exc:
            raise _bad(field, f"image is {exc.size} bytes, over the limit of {exc.limit} (--max-image-bytes)") from None
        except OSError as exc:
            raise _bad(field, f"cannot read {text!r}: {exc.strerror or exc}") from None
    _check_size(limits.base64_decoded_size(text), field)  # before decoding: no 1 GB buffer for a refusal
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise _bad(field, f"not valid base64: {exc}") from None


@dataclass(frozen=True)
class ProbedImage:
    """An input image whose header was read and checked; no pixel is decoded yet."""

    data: bytes
    width: int
    height: int
    field: str

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def probe_image(value: str, field: str, roots: list[Path]) -> ProbedImage:
    """Read and check an input image's header: its size is known, and over --max-image-pixels it is
    refused, before any pixel is decoded (a 200 KB PNG can hold 8192x8192 pixels)."""
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
    except ValidationFailed:
        raise
    except Image.DecompressionBombError:
        raise _bad(field, f"image is larger than {max_pixels} pixels (--max-image-pixels)") from None
    except Exception as exc:  # PIL raises many types for corrupt input
        raise _bad(field, f"not a readable image ({type(exc).__name__})") from None
    return ProbedImage(data, w, h, field)


def decode_probed(probed: ProbedImage, mode: str = "RGB") -> Any:
    """The pixels of a probed image, converted to `mode`; every failure names the field."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(probed.data))
        img.load()
    except Image.DecompressionBombError:
        raise _bad(probed.field, f"image is larger than {limits.current().max_image_pixels} pixels (--max-image-pixels)") from None
    except Exception as exc:  # PIL raises many types for corrupt input
        raise _bad(probed.field, f"not a readable image ({type(exc).__name__})") from None
    return img.convert(mode)


def decode_image(value: str, field: str, roots: list[Path], mode: str = "RGB") -> Any:
    """Open, verify and convert an input image; every failure names the field."""
    return decode_probed(probe_image(value, field, roots), mode)
