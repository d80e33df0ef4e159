"""Request shapes -> the canonical flat generation request.

Hosts send the flat shape (with a `parameters` bag and aliases) or the nested C#
EnhancedSDXLRequest shape. Keys are already snake_case here (protocol.keys did that).
"""

from __future__ import annotations

from typing import Any

from ..errors import ValidationFailed

# alias -> canonical field
ALIASES: dict[str, str] = {
    "model_name": "model_id",
    "model": "model_id",
    "num_inference_steps": "steps",
    "cfg_scale": "guidance_scale",
    "cfg": "guidance_scale",
    "batch_size": "num_images",
    "num_images_per_prompt": "num_images",
    "negative": "negative_prompt",
}

# Nested sections of the C# EnhancedSDXLRequest and where their keys go in the flat shape.
_NESTED_HYPER = "hyperparameters"
_NESTED_COND = "conditioning"


def _merge_under(top: dict[str, Any], bag: Any, path: str) -> dict[str, Any]:
    if bag is None:
        return top
    if not isinstance(bag, dict):
        raise ValidationFailed(f"{path} must be an object", [{"path": path, "message": "expected an object"}], rooted=True)
    merged = dict(bag)
    merged.update(top)  # the top level wins over the bag
    return merged


def _nested_to_flat(data: dict[str, Any]) -> dict[str, Any]:
    """Model{Base,Refiner,Vae}, Scheduler{Type,Steps}, Hyperparameters{…}, Conditioning{…}."""
    out = {k: v for k, v in data.items() if k not in ("model", "scheduler", _NESTED_HYPER, _NESTED_COND)}
    model = data.get("model")
    if isinstance(model, dict):
        if "base" in model:
            out.setdefault("model_id", model["base"])
        if model.get("refiner") is not None:
            out.setdefault("refiner", {"model": model["refiner"]})
        if model.get("vae") is not None:
            out.setdefault("vae", model["vae"])
    elif model is not None:
        out["model"] = model
    sched = data.get("scheduler")
    if isinstance(sched, dict):
        if "type" in sched:
            out.setdefault("scheduler", sched["type"])
        if "steps" in sched:
            out.setdefault("steps", sched["steps"])
        for k, v in sched.items():
            if k not in ("type", "steps"):
                out.setdefault(k, v)
    elif sched is not None:
        out["scheduler"] = sched
    for section in (_NESTED_HYPER, _NESTED_COND):
        body = data.get(section)
        if isinstance(body, dict):
            for k, v in body.items():
                out.setdefault(k, v)
        elif body is not None:
            raise ValidationFailed(f"{section} must be an object", [{"path": section, "message": "expected an object"}], rooted=True)
    return out


def is_nested(data: dict[str, Any]) -> bool:
    return (
        isinstance(data.get("model"), dict)
        or isinstance(data.get("scheduler"), dict)
        or _NESTED_HYPER in data
        or _NESTED_COND in data
    )


def normalize_generation(data: Any) -> Any:
    """Flatten, merge `parameters`, resolve aliases. Conflicting alias values are an error."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    bag = data.pop("parameters", None)
    data = _merge_under(data, bag, "parameters")
    if is_nested(data):
        data = _nested_to_flat(data)
    problems: list[dict[str, str]] = []
    for alias, canonical in ALIASES.items():
        if alias not in data:
            continue
        value = data.pop(alias)
        if canonical in data and data[canonical] != value:
            problems.append(
                {"path": alias, "message": f"conflicts with {canonical} ({value!r} vs {data[canonical]!r})"}
            )
            continue
        data[canonical] = value
    if problems:
        raise ValidationFailed(f"{problems[0]['path']}: {problems[0]['message']}", problems, rooted=True)
    if data.get("seed") == -1:
        data["seed"] = None
    return data
