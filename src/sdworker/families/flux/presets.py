"""FLUX.1's built-in quality and speed presets (store.builtin_presets collects every family's).

Sources:
- [flux-diffusers] diffusers Flux pipeline docs (huggingface.co/docs/diffusers/api/pipelines/flux):
  FLUX.1-dev `guidance_scale=3.5, num_inference_steps=50`; FLUX.1-schnell is timestep-distilled:
  `guidance_scale=0.0, num_inference_steps=4, max_sequence_length=256`.
- [flux-comfy] ComfyUI Flux examples (comfyanonymous.github.io/ComfyUI_examples/flux): dev at
  20 steps, euler + simple, guidance 3.5, cfg 1.
- [krea-card] black-forest-labs/FLUX.1-Krea-dev model card and fal.ai's FLUX.1 Krea endpoint
  defaults: guidance 4.5, 28 steps (recommended guidance 3.5-5, steps 28-32).
- [fbc] ParaAttention's First Block Cache (github.com/chengzeyi/ParaAttention), as diffusers ships it:
  a step is skipped only while the first block's residual changes by less than the threshold, so a
  low threshold (0.05; its authors show 0.08 near lossless on FLUX.1-dev) keeps the image close.
"""

from __future__ import annotations

from typing import Any

from ..base import preset_row as _row, step_cache

_SQ = {"width": 1024, "height": 1024}
_CACHE = step_cache("first_block", threshold=0.05)  # schnell's 4 steps leave nothing to skip


PRESETS: tuple[dict[str, Any], ...] = (
    # ---- Flux: guidance-distilled (dev, krea) read `guidance`; true CFG off (cfg 1). schnell: 4 steps, no guidance.
    _row("flux_dev", "quality", 50, 1.0, "euler", "simple", {**_SQ, "guidance": 3.5, "max_sequence_length": 512}, "[flux-diffusers]"),
    _row("flux_dev", "speed", 20, 1.0, "euler", "simple", {**_SQ, "guidance": 3.5, "max_sequence_length": 512, **_CACHE}, "[flux-comfy] [fbc]"),
    _row("flux_schnell", "quality", 4, 1.0, "euler", "simple", {**_SQ, "guidance": 0.0, "max_sequence_length": 256}, "[flux-diffusers]"),
    # schnell is distilled for 1-4 steps and 4 is the published recommendation, so speed equals quality.
    _row("flux_schnell", "speed", 4, 1.0, "euler", "simple", {**_SQ, "guidance": 0.0, "max_sequence_length": 256}, "[flux-diffusers]"),
    _row("flux_krea", "quality", 32, 1.0, "euler", "simple", {**_SQ, "guidance": 4.5, "max_sequence_length": 512}, "[krea-card]"),
    _row("flux_krea", "speed", 20, 1.0, "euler", "simple", {**_SQ, "guidance": 4.5, "max_sequence_length": 512, **_CACHE}, "[krea-card] (steps as [flux-comfy]) [fbc]"),
)
