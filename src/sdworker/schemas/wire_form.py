"""The params schema a host writes against: every spelling the worker accepts, not only the canonical one.

The pydantic models validate the normalised form (snake_case keys, aliases resolved, the nested C#
shape flattened). A host, though, may send `GuidanceScale`, `numInferenceSteps`, `cfg_scale`,
`Hyperparameters {…}` or a `parameters` bag; a schema of the normalised form would refuse those
requests under a standard validator. `accepted_spellings` derives, from the normalised schema,
one that describes what may be sent: each property under its snake_case, camelCase and PascalCase
names, the aliases each model reads, and (for generation requests) the nested sections.
It is looser than the worker only where the worker's own checks run after normalisation
(two spellings of one key with different values; an alias next to its field).
"""

from __future__ import annotations

import copy
from typing import Any

DIALECT = "https://json-schema.org/draft/2020-12/schema"

SPELLINGS_NOTE = (
    "Accepted spellings: keys may be snake_case, camelCase or PascalCase, and the aliases listed here "
    "are accepted; the worker normalises them to the snake_case fields before validating."
)

_GENERATION_TITLES = ("GenerationRequest", "VideoRequest")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def spellings(name: str) -> list[str]:
    """`guidance_scale` -> [guidance_scale, guidanceScale, GuidanceScale] (each once)."""
    camel = _camel(name)
    out = [name]
    for variant in (camel, camel[:1].upper() + camel[1:]):
        if variant not in out:
            out.append(variant)
    return out


def _alias_tables() -> dict[str, dict[str, str]]:
    """Schema title -> {alias: field}, read from the tables the models themselves apply."""
    from .generation import _CONTROLNET_ALIASES
    from .normalize import ALIASES
    from .postprocess import _ALIASES as POSTPROCESS_ALIASES
    from .video import VIDEO_ALIASES

    lora = {"path": "name", "model_path": "name", "model": "name", "model_id": "name", "scale": "weight", "strength": "weight"}
    return {
        "GenerationRequest": dict(ALIASES),
        "VideoRequest": {**ALIASES, **VIDEO_ALIASES},
        "LoRARef": lora,
        "ControlNetOptions": dict(_CONTROLNET_ALIASES),
        "HiresOptions": {"denoising_strength": "denoise"},
        "PostProcessStep": dict(POSTPROCESS_ALIASES),
        "UpscaleRequest": dict(POSTPROCESS_ALIASES),
    }


def _generation_extras(props: dict[str, Any]) -> dict[str, Any]:
    """What a generation request accepts beyond its fields: the bag, the nested C# shape, loose values."""
    anything = {"type": "object", "description": "generation fields (any spelling), merged under the top level"}
    extras: dict[str, Any] = {
        "parameters": anything,
        "hyperparameters": {**anything, "description": "nested shape: GuidanceScale, Width, Height, Seed, ..."},
        "conditioning": {**anything, "description": "nested shape: Prompt, NegativePrompt, LoRAs, ControlNets, ..."},
        "model": {
            "anyOf": [{"type": "string"}, {"type": "object", "description": "nested shape: {Base, Refiner, Vae}"}],
            "description": "alias of model_id, or the nested shape's Model section",
        },
    }
    if "scheduler" in props:
        extras["scheduler"] = {"anyOf": [props["scheduler"], {"type": "object", "description": "nested shape: {Type, Steps}"}]}
    if "seed" in props:
        extras["seed"] = {"anyOf": [props["seed"], {"const": -1}], "description": "-1 or absent: random"}
    if "refiner" in props:
        extras["refiner"] = {"anyOf": [props["refiner"], {"type": "string", "description": "the refiner model alone"}]}
    return extras


def _rewrite_object(node: dict[str, Any], aliases: dict[str, str], generation: bool) -> None:
    props: dict[str, Any] = node["properties"]
    wide = dict(props)
    for alias, field in aliases.items():
        if field in props and alias not in wide:
            wide[alias] = props[field]
    if generation:
        wide.update(_generation_extras(props))
    node["properties"] = {variant: sub for name, sub in wide.items() for variant in spellings(name)}
    required = node.pop("required", None)
    if required and not generation:  # a generation request may take any field from `parameters` or nested sections
        names = {field: [field, *(a for a, f in aliases.items() if f == field)] for field in required}
        node.setdefault("allOf", []).extend(
            {"anyOf": [{"required": [v]} for name in names[field] for v in spellings(name)]} for field in required
        )


def _walk(node: Any, tables: dict[str, dict[str, str]]) -> None:
    if isinstance(node, dict):
        for value in node.values():
            _walk(value, tables)
        if isinstance(node.get("properties"), dict):
            title = node.get("title", "")
            _rewrite_object(node, tables.get(title, {}), title in _GENERATION_TITLES)
    elif isinstance(node, list):
        for value in node:
            _walk(value, tables)


def accepted_spellings(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a normalised params schema that describes every spelling the worker accepts."""
    out = copy.deepcopy(schema)
    _walk(out, _alias_tables())
    note = SPELLINGS_NOTE
    out["description"] = f"{out['description']}\n\n{note}" if out.get("description") else note
    return out
