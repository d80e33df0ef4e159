"""Small readers of a state dict given as ``{key: shape}``: what detection and the families' own
detectors (Family.detect_denoiser, detect_controlnet) share."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

Shapes = Mapping[str, tuple[int, ...]]

_ATTN2_K = re.compile(r"attn2\.to_k\.weight$")


def sub(shapes: Shapes, prefix: str) -> dict[str, tuple[int, ...]]:
    """The keys under `prefix`, with it removed."""
    return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


def has_prefix(keys: Any, *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def first_dim(shapes: Shapes, keys: Sequence[str], index: int) -> int | None:
    """Dimension `index` of the first of `keys` present with that many dimensions."""
    for key in keys:
        shape = shapes.get(key)
        if shape and len(shape) > index:
            return shape[index]
    return None


def context_dim(shapes: Shapes) -> int | None:
    """Cross-attention context width: the input dim of any ``attn2.to_k`` projection."""
    for key, shape in shapes.items():
        if _ATTN2_K.search(key) and len(shape) == 2:
            return shape[1]
    return None
