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

Sources: each family's presets module (families/<name>/presets.py) names them.
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


# The listing order of the built-ins (config.list_presets, messages), as before the families held
# them; a family not named here comes after these, in registry order.
_ORDER = ("sd", "flux", "hidream", "wan", "sd3")
BUILTIN_PRESETS: tuple[BuiltinPreset, ...] = tuple(
    BuiltinPreset(**row)
    for fam in sorted(FAMILIES, key=lambda f: _ORDER.index(f.name) if f.name in _ORDER else len(_ORDER))
    for row in fam.builtin_presets
)

BASE_MODELS: tuple[str, ...] = tuple(dict.fromkeys(p.base_model for p in BUILTIN_PRESETS))

_BY_KEY = {(p.base_model, p.configuration_type): p for p in BUILTIN_PRESETS}
_BY_ID = {p.id: p for p in BUILTIN_PRESETS}


def builtin(base_model: str, configuration_type: str) -> BuiltinPreset | None:
    return _BY_KEY.get((base_model, configuration_type))


def builtin_by_id(preset_id: str) -> BuiltinPreset | None:
    return _BY_ID.get(preset_id)
