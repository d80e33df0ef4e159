"""The built-in quality and speed presets of the base architectures, as data, with their sources.

They live in code, not in the database: `config.resolve` falls back to them when a model has no
preset of its own, and `config.populate` copies them into the database for every discovered model.
docs/presets.md shows the same table.

Conventions:
- `sampler` + `scheduler` are stored as ComfyUI/A1111 names (algorithm + sigma schedule, contract
  section 6): `sampler: "dpmpp_2m", scheduler: "karras"` is "DPM++ 2M Karras"; `"normal"` is the
  model's default schedule, `"simple"` ComfyUI's linear flow-matching schedule.
- `cfg_scale` is real classifier-free guidance; 1.0 means off (the negative prompt is not used).
- Guidance-distilled models (Flux dev/krea) put their distilled guidance in
  `model_specific_params.guidance`; that is what diffusers' `guidance_scale` means for them.
- `model_specific_params` keys: width, height, clip_skip, guidance, shift (flow-matching sigma
  shift), max_sequence_length, num_frames, video_fps, guidance_scale_2 (Wan 2.2 low-noise
  expert), boundary_ratio (Wan 2.2 expert switch).

Sources (the `source` of each preset names the one its numbers come from):
- [sd-samplers] stable-diffusion-art.com, "Stable Diffusion Samplers: A Comprehensive Guide"
  (https://stable-diffusion-art.com/samplers/): DPM++ 2M Karras at 20-30 steps for quality,
  Euler / Euler a converge fast at low step counts; CFG 7 is the classic default.
- [sdxl-card] stabilityai/stable-diffusion-xl-base-1.0 model card: native 1024x1024.
- [sd15-card] stable-diffusion-v1-5/stable-diffusion-v1-5 model card: native 512x512; A1111's
  default CFG 7, 7.5 in the original txt2img script.
- [pony-card] Pony Diffusion V6 XL, civitai.com/models/257749: "load this model with clip skip 2",
  Euler a, 25 steps, 1024px.
- [flux-diffusers] diffusers Flux pipeline docs (huggingface.co/docs/diffusers/api/pipelines/flux):
  FLUX.1-dev `guidance_scale=3.5, num_inference_steps=50`; FLUX.1-schnell is timestep-distilled:
  `guidance_scale=0.0, num_inference_steps=4, max_sequence_length=256`.
- [flux-comfy] ComfyUI Flux examples (comfyanonymous.github.io/ComfyUI_examples/flux): dev at
  20 steps, euler + simple, guidance 3.5, cfg 1.
- [krea-card] black-forest-labs/FLUX.1-Krea-dev model card and fal.ai's FLUX.1 Krea endpoint
  defaults: guidance 4.5, 28 steps (recommended guidance 3.5-5, steps 28-32).
- [hidream-repo] HiDream-ai/HiDream-I1 inference.py MODEL_CONFIGS: Full 50 steps, guidance 5.0,
  shift 3.0, FlowUniPCMultistepScheduler; Dev 28 steps, guidance 0 (no CFG), shift 6.0,
  FlashFlowMatchEulerDiscreteScheduler; Fast 16 steps.
- [wan21-diffusers] diffusers WanPipeline docs / example: Wan2.1-T2V-14B, 1280x720, 81 frames,
  guidance 5.0, 50 steps (pipeline default), UniPC with flow_shift 5.0 for 720P and 3.0 for
  480P, exported at 16 fps.
- [wan22-repo] Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py: 40 steps, shift 12.0, boundary
  0.875, guide scale (3.0 low-noise, 4.0 high-noise); shared config: 81 frames at 16 fps.
- [wan22-comfy] ComfyUI's Wan 2.2 14B text-to-video template: 20 steps split over the two
  experts, cfg 3.5, euler + simple, shift 8.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ..families.registry import FAMILIES

# The namespace of the built-ins' ids: uuid5(NAMESPACE, "builtin:<base_model>:<configuration_type>"),
# so a built-in keeps its id across versions and machines.
NAMESPACE = uuid.UUID("5d0c6a52-3f43-4f6b-9a57-6b2f6f1e0c11")

CONFIGURATION_TYPES = ("quality", "speed")


@dataclass(frozen=True)
class BuiltinPreset:
    base_model: str
    configuration_type: str
    steps: int
    cfg_scale: float
    sampler: str
    scheduler: str
    model_specific_params: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def id(self) -> str:
        return builtin_id(self.base_model, self.configuration_type)


def builtin_id(base_model: str, configuration_type: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"builtin:{base_model}:{configuration_type}"))


_SQ = {"width": 1024, "height": 1024}

BUILTIN_PRESETS: tuple[BuiltinPreset, ...] = (
    # ---- Stable Diffusion families: quality = DPM++ 2M Karras ~30 steps CFG 7-7.5; speed = Euler a, fewer steps, lower CFG
    BuiltinPreset("sdxl", "quality", 30, 7.0, "dpmpp_2m", "karras", {**_SQ}, "[sd-samplers] [sdxl-card]"),
    BuiltinPreset("sdxl", "speed", 12, 5.0, "euler_a", "normal", {**_SQ}, "[sd-samplers] [sdxl-card]"),
    BuiltinPreset("pony", "quality", 25, 7.0, "dpmpp_2m", "karras", {**_SQ, "clip_skip": 2}, "[pony-card] [sd-samplers]"),
    BuiltinPreset("pony", "speed", 15, 6.0, "euler_a", "normal", {**_SQ, "clip_skip": 2}, "[pony-card] [sd-samplers]"),
    BuiltinPreset("sd_1_5", "quality", 30, 7.5, "dpmpp_2m", "karras", {"width": 512, "height": 512}, "[sd-samplers] [sd15-card]"),
    BuiltinPreset("sd_1_5", "speed", 15, 6.0, "euler_a", "normal", {"width": 512, "height": 512}, "[sd-samplers] [sd15-card]"),
    # ---- Flux: guidance-distilled (dev, krea) read `guidance`; true CFG off (cfg 1). schnell: 4 steps, no guidance.
    BuiltinPreset(
        "flux_dev", "quality", 50, 1.0, "euler", "simple",
        {**_SQ, "guidance": 3.5, "max_sequence_length": 512}, "[flux-diffusers]",
    ),
    BuiltinPreset(
        "flux_dev", "speed", 20, 1.0, "euler", "simple",
        {**_SQ, "guidance": 3.5, "max_sequence_length": 512}, "[flux-comfy]",
    ),
    BuiltinPreset(
        "flux_schnell", "quality", 4, 1.0, "euler", "simple",
        {**_SQ, "guidance": 0.0, "max_sequence_length": 256}, "[flux-diffusers]",
    ),
    # schnell is distilled for 1-4 steps and 4 is the published recommendation, so speed equals quality.
    BuiltinPreset(
        "flux_schnell", "speed", 4, 1.0, "euler", "simple",
        {**_SQ, "guidance": 0.0, "max_sequence_length": 256}, "[flux-diffusers]",
    ),
    BuiltinPreset(
        "flux_krea", "quality", 32, 1.0, "euler", "simple",
        {**_SQ, "guidance": 4.5, "max_sequence_length": 512}, "[krea-card]",
    ),
    BuiltinPreset(
        "flux_krea", "speed", 20, 1.0, "euler", "simple",
        {**_SQ, "guidance": 4.5, "max_sequence_length": 512}, "[krea-card] (steps as [flux-comfy])",
    ),
    # ---- HiDream-I1: quality = the Full model's settings; speed = the distilled Dev model's (no CFG).
    BuiltinPreset("hidream", "quality", 50, 5.0, "uni_pc", "simple", {**_SQ, "shift": 3.0}, "[hidream-repo] Full"),
    BuiltinPreset("hidream", "speed", 28, 1.0, "euler", "normal", {**_SQ, "shift": 6.0}, "[hidream-repo] Dev"),
    # ---- Wan video: real CFG; quality at 720P, speed at 480P with the 480P shift.
    BuiltinPreset(
        "wan_2_1", "quality", 50, 5.0, "uni_pc", "simple",
        {"width": 1280, "height": 720, "num_frames": 81, "video_fps": 16, "shift": 5.0}, "[wan21-diffusers]",
    ),
    BuiltinPreset(
        "wan_2_1", "speed", 30, 5.0, "uni_pc", "simple",
        {"width": 832, "height": 480, "num_frames": 81, "video_fps": 16, "shift": 3.0}, "[wan21-diffusers] 480P",
    ),
    BuiltinPreset(
        "wan_2_2", "quality", 40, 4.0, "uni_pc", "simple",
        {"width": 1280, "height": 720, "num_frames": 81, "video_fps": 16, "shift": 12.0,
         "guidance_scale_2": 3.0, "boundary_ratio": 0.875},
        "[wan22-repo]",
    ),
    BuiltinPreset(
        "wan_2_2", "speed", 20, 3.5, "euler", "simple",
        {"width": 832, "height": 480, "num_frames": 81, "video_fps": 16, "shift": 8.0,
         "guidance_scale_2": 3.5, "boundary_ratio": 0.875},
        "[wan22-comfy]",
    ),
)

# the families that keep their presets in their own package (families/<name>/presets.py)
BUILTIN_PRESETS += tuple(BuiltinPreset(**row) for fam in FAMILIES for row in fam.builtin_presets)

BASE_MODELS: tuple[str, ...] = tuple(dict.fromkeys(p.base_model for p in BUILTIN_PRESETS))

_BY_KEY = {(p.base_model, p.configuration_type): p for p in BUILTIN_PRESETS}
_BY_ID = {p.id: p for p in BUILTIN_PRESETS}


def builtin(base_model: str, configuration_type: str) -> BuiltinPreset | None:
    return _BY_KEY.get((base_model, configuration_type))


def builtin_by_id(preset_id: str) -> BuiltinPreset | None:
    return _BY_ID.get(preset_id)
