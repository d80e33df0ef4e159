"""What a preset means for a request: the model's base model, and the request fields a preset sets."""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ValidationFailed

if TYPE_CHECKING:
    from pydantic import BaseModel, TypeAdapter

    from ...managers.locator import ModelRef

# ---- base model detection ------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def detect_base_model(ref: ModelRef) -> str:
    """The contract's base_model id of a discovered model, for its presets.

    What the locator found, refined where it could not tell: Pony (an SDXL fine-tune) by name, and
    a base it left at unknown/flux told by the family that runs the model's pipeline class
    (families.registry, the same detector the locator asks).
    """
    from ...families.registry import folder_base_model

    base = ref.base_model
    if base == "sdxl" and "pony" in ref.model_id.lower():
        return "pony"
    if base not in ("unknown", "flux"):
        return base
    index = _read_json(ref.path / "model_index.json")
    index.setdefault("_class_name", ref.pipeline_class or "")
    found = folder_base_model(ref.path, index)
    return base if found == "unknown" else found


# ---- applying a preset to a request ------------------------------------------------------------------

# model_specific_params key -> generation request field (applied only when the request has that field).
_REQUEST_FIELDS = (
    ("width", "width"),
    ("height", "height"),
    ("clip_skip", "clip_skip"),
    ("num_frames", "num_frames"),
    ("video_fps", "fps"),
    ("guidance_scale_2", "guidance_scale_2"),
    ("max_sequence_length", "max_sequence_length"),
    ("optimize", "optimize"),  # speed options (managers.optimize): "max", "none" or an object
)


def request_values(preset: dict[str, Any]) -> dict[str, Any]:
    """Request field -> value a preset provides (before the request's own values win)."""
    msp = preset.get("model_specific_params") or {}
    guidance = msp.get("guidance")
    scale = guidance if isinstance(guidance, (int, float)) and not isinstance(guidance, bool) else None
    distilled = scale is not None
    out: dict[str, Any] = {
        "steps": preset["steps"],
        # Guidance-distilled pipelines (Flux dev/krea/schnell) read their distilled guidance as
        # diffusers' guidance_scale; everything else reads real CFG there.
        "guidance_scale": float(scale) if scale is not None else preset["cfg_scale"],
    }
    if distilled:  # their cfg_scale is real CFG on top (Flux: true_cfg_scale, used with a negative prompt)
        out["true_cfg_scale"] = float(preset["cfg_scale"])
    for key, field in _REQUEST_FIELDS:
        if msp.get(key) is not None:
            out[field] = msp[key]
    return out


@lru_cache(maxsize=256)
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    from typing import Annotated

    from pydantic import TypeAdapter

    info = model.model_fields[name]
    field_type: Any = Annotated[info.annotation, info]  # a type form built at run time
    return TypeAdapter(field_type)


def apply_preset(req: BaseModel, preset: dict[str, Any], keep: Iterable[str] = ()) -> tuple[BaseModel, dict[str, Any]]:
    """`req` with the preset's values under the fields it set itself (model_fields_set), except
    the fields in `keep` (the model's family keeps its own defaults there).

    Returns the new request and the values applied (field -> value). A value that the request's
    own field rejects (a hand-made preset with width 1000) is a validation_error at data.preset.
    """
    from pydantic import ValidationError

    model = type(req)
    fields = model.model_fields
    applied: dict[str, Any] = {}  # as the result's parameters show it (JSON values)
    update: dict[str, Any] = {}
    for name, value in request_values(preset).items():
        if name not in fields or name in req.model_fields_set or name in keep:
            continue
        adapter = _field_adapter(model, name)
        try:
            update[name] = adapter.validate_python(value)
            applied[name] = adapter.dump_python(update[name], mode="json", exclude_defaults=True)
        except ValidationError as exc:
            msg = exc.errors(include_url=False)[0].get("msg", "invalid")
            where = f"preset {preset['id']} ({preset['origin']}, {preset['configuration_type']})"
            raise ValidationFailed(
                f"data.preset: {where} sets {name}={value!r}, which is invalid: {msg}; fix the preset or send {name}",
                [{"path": "data.preset", "message": f"{name}={value!r} from {where}: {msg}"}],
            ) from None
    return (req.model_copy(update=update) if update else req), applied
