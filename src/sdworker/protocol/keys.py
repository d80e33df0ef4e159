"""Key normalization: hosts send snake_case, camelCase or PascalCase; the worker reads snake_case."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

# Words whose capitals are not word boundaries ("LoRAs" is one word, not "lo_r_as").
_WORDS = (("LoRA", "Lora"), ("ControlNet", "Controlnet"), ("SDXL", "Sdxl"), ("VAE", "Vae"))
_ACRONYM_END = re.compile(r"([A-Z]+)([A-Z][a-z])")
_LOWER_UPPER = re.compile(r"([a-z0-9])([A-Z])")


@lru_cache(maxsize=4096)
def to_snake(key: str) -> str:
    """`GuidanceScale` -> `guidance_scale`, `numImages` -> `num_images`, `LoRAs` -> `loras`."""
    if key.islower() or not any(c.isupper() for c in key):
        return key
    for word, repl in _WORDS:
        key = key.replace(word, repl)
    key = _ACRONYM_END.sub(r"\1_\2", key)
    key = _LOWER_UPPER.sub(r"\1_\2", key)
    return key.lower()


def normalize_keys(value: Any) -> Any:
    """Recursively snake_case every dict key; values (prompts, paths) are left as they are."""
    if isinstance(value, dict):
        if not value:
            return value
        return {to_snake(k) if isinstance(k, str) else k: normalize_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_keys(v) for v in value]
    return value
