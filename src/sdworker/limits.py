"""Input limits that depend on the worker's settings, readable where no settings object reaches.

Request schemas and the image decoder run far from the App (pydantic validators, managers), so
the App publishes its limits here once at construction; one worker process has one App. The
defaults are the flags' defaults, so code that never configures them (unit tests) gets the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_LINE = 64 * 1024 * 1024  # one stdin line (--max-line-bytes)
DEFAULT_MAX_PROMPT_CHARS = 10_000
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024  # decoded size of one input image
DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # decompression-bomb guard, checked from the header
DEFAULT_MAX_RESOLUTION = 2048  # an output side; also one taken from an init image


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_resolution: int = DEFAULT_MAX_RESOLUTION


_current = Limits()


def current() -> Limits:
    return _current


def configure(settings: Any) -> Limits:
    """Publish the limits of `settings` (a Settings, or anything with the same attributes)."""
    global _current
    _current = Limits(
        max_prompt_chars=int(getattr(settings, "max_prompt_chars", DEFAULT_MAX_PROMPT_CHARS)),
        max_image_bytes=int(getattr(settings, "max_image_bytes", DEFAULT_MAX_IMAGE_BYTES)),
        max_image_pixels=int(getattr(settings, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)),
        max_resolution=int(getattr(settings, "max_resolution", DEFAULT_MAX_RESOLUTION)),
    )
    return _current


def check_prompt(value: str | None) -> str | None:
    """A pydantic field check: a prompt longer than --max-prompt-chars is a field error."""
    limit = _current.max_prompt_chars
    if value is not None and len(value) > limit:
        from pydantic_core import PydanticCustomError

        raise PydanticCustomError(
            "prompt_too_long",
            "{length} characters is over the limit of {limit} (--max-prompt-chars)",
            {"length": len(value), "limit": limit},
        )
    return value


def base64_decoded_size(text: str) -> int:
    """Bytes that `text` decodes to as base64, counted without decoding (whitespace ignored)."""
    n = len(text) - sum(text.count(c) for c in " \t\r\n")
    pad = 0
    stripped = text.rstrip(" \t\r\n")
    if stripped.endswith("=="):
        pad = 2
    elif stripped.endswith("="):
        pad = 1
    return max(0, n * 3 // 4 - pad)
