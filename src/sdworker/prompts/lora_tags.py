"""A1111 extra-network tags for LoRAs in prompts: ``<lora:name:0.8>``, ``<lora:name>``, ``<lyco:name:0.5>``.

A1111 reads ``<lora:NAME:TE_WEIGHT:UNET_WEIGHT>`` (plus named args such as ``unet=0.5``); a
LoRA here has one weight, the first positional number (1.0 when there is none). The tag is cut
out of the prompt and nothing else changes: the text around it stays as written (extra spaces
do not change CLIP's tokens). A tag whose weight is not a finite number is not a LoRA tag and
stays in the text untouched. Names are matched as written (the catalog resolves them).
"""

from __future__ import annotations

import math
import re

__all__ = ["LORA_TAG", "extract_lora_tags"]

#: ``<`` kind ``:`` name, then optional ``:``-separated arguments, ``>``; whitespace anywhere.
LORA_TAG = re.compile(r"<\s*(lora|lyco)\s*:\s*([^:<>]*?)\s*((?::[^<>]*)?)>", re.IGNORECASE)


def _weight(args: str) -> float | None:
    """The first positional argument as a finite number (1.0 when there is none); None: invalid."""
    for raw in args.split(":")[1:]:
        arg = raw.strip()
        if not arg or "=" in arg:
            continue  # empty, or a named argument (unet=, te=, dyn=)
        try:
            value = float(arg)
        except ValueError:
            return None
        return value if math.isfinite(value) else None
    return 1.0


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """``(prompt without the LoRA tags, [(name, weight), ...])`` in the order the tags appear."""
    found: list[tuple[str, float]] = []
    kept: list[str] = []
    pos = 0
    for m in LORA_TAG.finditer(prompt):
        name, weight = m.group(2), _weight(m.group(3))
        if not name or weight is None:
            continue  # not a usable tag: leave it in the text
        kept.append(prompt[pos : m.start()])
        pos = m.end()
        found.append((name, weight))
    kept.append(prompt[pos:])
    return "".join(kept), found
