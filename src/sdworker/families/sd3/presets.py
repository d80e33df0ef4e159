"""SD 3.5's built-in quality and speed presets (store.builtin_presets collects every family's).

Sources:
- [sd35-large-card] stabilityai/stable-diffusion-3.5-large model card (diffusers example):
  ``num_inference_steps=28, guidance_scale=3.5``, 1024x1024.
- [sd35-comfy] ComfyUI's SD 3.5 example workflow: euler + simple at 20 steps (the speed preset keeps
  the card's guidance 3.5).
- [fbc] First Block Cache at threshold 0.05, as for Flux's speed presets (families/flux/presets.py):
  it skips a step only while the first block's residual barely changes.
"""

from __future__ import annotations

from typing import Any

from ..base import step_cache

_SQ = {"width": 1024, "height": 1024, "max_sequence_length": 256}

PRESETS: tuple[dict[str, Any], ...] = (
    {"base_model": "sd3", "configuration_type": "quality", "steps": 28, "cfg_scale": 3.5, "sampler": "euler", "scheduler": "simple",
     "model_specific_params": dict(_SQ), "source": "[sd35-large-card]"},
    {"base_model": "sd3", "configuration_type": "speed", "steps": 20, "cfg_scale": 3.5, "sampler": "euler", "scheduler": "simple",
     "model_specific_params": {**_SQ, **step_cache("first_block", threshold=0.05)}, "source": "[sd35-comfy] [fbc]"},
)
