"""The request as the session ledger stores it: base64 images replaced by a placeholder, long strings cut.

Why: a request may carry megabytes of images; the ledger keeps what a host needs to recognise a
job (prompt, settings, paths), not its pixels.
"""

from __future__ import annotations

import re
from typing import Any

from ..limits import base64_decoded_size

IMAGE_KEYS = frozenset({"init_image", "mask_image", "image", "images", "conditioning_image", "control_image", "ip_adapter_image"})
_B64_CHARS = re.compile(r"[A-Za-z0-9+/=_\-\r\n]+")  # no spaces: prose is never taken for an image
_PATH_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_STRING = 20_000  # longer strings (not images) are cut in the stored request


def _image_placeholder(text: str) -> str | None:
    """'<image: N bytes>' when `text` is base64 image data (data: URL or bare), else None."""
    if len(text) < 4096 and text.lower().rstrip().endswith(_PATH_EXT):
        return None  # a path: worth keeping as is
    body = text
    if text.startswith("data:"):
        body = text.partition(",")[2]
    elif not _B64_CHARS.fullmatch(text[:4096]):
        return None
    return f"<image: {base64_decoded_size(body)} bytes>"


def elide(value: Any, key: str | None = None, depth: int = 0) -> Any:
    """The request as stored: base64 images replaced by a placeholder, very long strings cut."""
    if isinstance(value, str):
        if (key in IMAGE_KEYS and len(value) > 64) or len(value) >= 256:
            placeholder = _image_placeholder(value)
            if placeholder is not None:
                return placeholder
        if len(value) > MAX_STRING:
            return value[:MAX_STRING] + f"...<cut {len(value) - MAX_STRING} chars>"
        return value
    if depth > 64:
        return "<too deep>"
    if isinstance(value, dict):
        return {str(k): elide(v, str(k).lower(), depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [elide(v, key, depth + 1) for v in value]
    return value
