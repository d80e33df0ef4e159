"""Key normalization: hosts send snake_case, camelCase or PascalCase; the worker reads snake_case."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from ..errors import ValidationFailed

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


def normalize_keys(value: Any, path: str = "") -> Any:
    """Recursively snake_case every dict key; values (prompts, paths) are left as they are.

    Two spellings of one key in one object (`steps` and `Steps`) with different values are a
    validation_error naming both (as two aliases of one field are): the worker never picks one
    silently. The same value twice is no conflict.
    """
    if isinstance(value, dict):
        if not value:
            return value
        out: dict[Any, Any] = {}
        spelled: dict[Any, Any] | None = None  # snake key -> the key as sent, only once one was renamed
        for k, v in value.items():
            if isinstance(k, str):
                nk = to_snake(k)
                if type(v) is dict or type(v) is list:
                    v = normalize_keys(v, f"{path}.{k}" if path else k)
            else:
                nk = k
            if nk in out:
                first = spelled.get(nk, nk) if spelled is not None else nk
                if out[nk] != v or type(out[nk]) is not type(v):
                    raise _conflict(path, first, k, out[nk], v)
            elif nk != k:
                if spelled is None:
                    spelled = {}
                spelled[nk] = k
            out[nk] = v
        return out
    if isinstance(value, list):
        return [normalize_keys(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _conflict(path: str, first: Any, second: Any, a: Any, b: Any) -> ValidationFailed:
    where = f"{path}.{second}" if path else str(second)
    message = f"{first!r} and {second!r} are one key ({to_snake(str(second))!r}) with two values ({_short(a)} vs {_short(b)}); send it once"
    return ValidationFailed(f"{where}: {message}", [{"path": where, "message": message}], rooted=True)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
