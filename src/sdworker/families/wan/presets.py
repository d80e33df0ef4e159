"""Wan's built-in quality and speed presets (store.builtin_presets collects every family's).

Sources:
- [wan21-diffusers] diffusers WanPipeline docs / example: Wan2.1-T2V-14B, 1280x720, 81 frames,
  guidance 5.0, 50 steps (pipeline default), UniPC with flow_shift 5.0 for 720P and 3.0 for
  480P, exported at 16 fps.
- [wan22-repo] Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py: 40 steps, shift 12.0, boundary
  0.875, guide scale (3.0 low-noise, 4.0 high-noise); shared config: 81 frames at 16 fps.
- [wan22-comfy] ComfyUI's Wan 2.2 14B text-to-video template: 20 steps split over the two
  experts, cfg 3.5, euler + simple, shift 8.
- [fbc] First Block Cache at threshold 0.05, as for Flux's speed presets (families/flux/presets.py):
  it skips a step only while the first block's residual barely changes.
"""

from __future__ import annotations

from typing import Any

from ..base import preset_row as _row, step_cache

_CACHE = step_cache("first_block", threshold=0.05)  # [fbc]: skips only steps that barely change

PRESETS: tuple[dict[str, Any], ...] = (
    # ---- Wan video: real CFG; quality at 720P, speed at 480P with the 480P shift.
    _row("wan_2_1", "quality", 50, 5.0, "uni_pc", "simple", {"width": 1280, "height": 720, "num_frames": 81, "video_fps": 16, "shift": 5.0}, "[wan21-diffusers]"),
    _row("wan_2_1", "speed", 30, 5.0, "uni_pc", "simple", {"width": 832, "height": 480, "num_frames": 81, "video_fps": 16, "shift": 3.0, **_CACHE}, "[wan21-diffusers] 480P [fbc]"),
    _row("wan_2_2", "quality", 40, 4.0, "uni_pc", "simple", {"width": 1280, "height": 720, "num_frames": 81, "video_fps": 16, "shift": 12.0, "guidance_scale_2": 3.0, "boundary_ratio": 0.875}, "[wan22-repo]"),
    _row("wan_2_2", "speed", 20, 3.5, "euler", "simple", {"width": 832, "height": 480, "num_frames": 81, "video_fps": 16, "shift": 8.0, "guidance_scale_2": 3.5, "boundary_ratio": 0.875, **_CACHE}, "[wan22-comfy] [fbc]"),
)
