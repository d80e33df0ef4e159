"""Stable Diffusion 1.5, SDXL and Pony: their built-in quality and speed presets (store.builtin_presets collects every family's).

Sources:
- [sd-samplers] stable-diffusion-art.com, "Stable Diffusion Samplers: A Comprehensive Guide"
  (https://stable-diffusion-art.com/samplers/): DPM++ 2M Karras at 20-30 steps for quality,
  Euler / Euler a converge fast at low step counts; CFG 7 is the classic default.
- [sdxl-card] stabilityai/stable-diffusion-xl-base-1.0 model card: native 1024x1024.
- [sd15-card] stable-diffusion-v1-5/stable-diffusion-v1-5 model card: native 512x512; A1111's
  default CFG 7, 7.5 in the original txt2img script.
- [pony-card] Pony Diffusion V6 XL, civitai.com/models/257749: "load this model with clip skip 2",
  Euler a, 25 steps, 1024px.
- [deepcache] Ma et al., "DeepCache: Accelerating Diffusion Models for Free" (CVPR 2024): caching
  every other step (N=2) keeps CLIP score and FID at the full model's on SD 1.5; the speed presets
  use that interval and run the first two calls in full.
"""

from __future__ import annotations

from typing import Any

from ..base import preset_row as _row, step_cache

_SQ = {"width": 1024, "height": 1024}
_CACHE = step_cache("deepcache", interval=2, start=2)


PRESETS: tuple[dict[str, Any], ...] = (
    # ---- Stable Diffusion families: quality = DPM++ 2M Karras ~30 steps CFG 7-7.5; speed = Euler a, fewer steps, lower CFG
    _row("sdxl", "quality", 30, 7.0, "dpmpp_2m", "karras", {**_SQ}, "[sd-samplers] [sdxl-card]"),
    _row("sdxl", "speed", 12, 5.0, "euler_a", "normal", {**_SQ, **_CACHE}, "[sd-samplers] [sdxl-card] [deepcache]"),
    _row("pony", "quality", 25, 7.0, "dpmpp_2m", "karras", {**_SQ, "clip_skip": 2}, "[pony-card] [sd-samplers]"),
    _row("pony", "speed", 15, 6.0, "euler_a", "normal", {**_SQ, "clip_skip": 2, **_CACHE}, "[pony-card] [sd-samplers] [deepcache]"),
    _row("sd_1_5", "quality", 30, 7.5, "dpmpp_2m", "karras", {"width": 512, "height": 512}, "[sd-samplers] [sd15-card]"),
    _row("sd_1_5", "speed", 15, 6.0, "euler_a", "normal", {"width": 512, "height": 512, **_CACHE}, "[sd-samplers] [sd15-card] [deepcache]"),
)
