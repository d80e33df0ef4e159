"""HiDream-I1's built-in quality and speed presets (store.builtin_presets collects every family's).

Sources:
- [hidream-repo] HiDream-ai/HiDream-I1 inference.py MODEL_CONFIGS: Full 50 steps, guidance 5.0,
  shift 3.0, FlowUniPCMultistepScheduler; Dev 28 steps, guidance 0 (no CFG), shift 6.0,
  FlashFlowMatchEulerDiscreteScheduler; Fast 16 steps.
"""

from __future__ import annotations

from typing import Any

from ..base import preset_row as _row

_SQ = {"width": 1024, "height": 1024}


PRESETS: tuple[dict[str, Any], ...] = (
    # ---- HiDream-I1: quality = the Full model's settings; speed = the distilled Dev model's (no CFG).
    _row("hidream", "quality", 50, 5.0, "uni_pc", "simple", {**_SQ, "shift": 3.0}, "[hidream-repo] Full"),
    _row("hidream", "speed", 28, 1.0, "euler", "normal", {**_SQ, "shift": 6.0}, "[hidream-repo] Dev"),
)
