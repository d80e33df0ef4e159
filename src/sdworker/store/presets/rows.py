"""Stored rows to the wire's dicts (and built-ins to the same shape); the store's shared errors and filters."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ...errors import ValidationFailed
from ..builtin_presets import BuiltinPreset
from .documents import _COLUMNS, DOC_FIELDS

def builtin_document(b: BuiltinPreset) -> dict[str, Any]:
    return {
        "id": b.id,
        "model_id": None,
        "base_model": b.base_model,
        "configuration_type": b.configuration_type,
        "steps": b.steps,
        "cfg_scale": float(b.cfg_scale),
        "sampler": b.sampler,
        "scheduler": b.scheduler,
        "model_specific_params": dict(b.model_specific_params),
        "created_at": None,
        "updated_at": None,
        "origin": "builtin",
        "source": b.source,
    }


def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = {k: row[k] for k in _COLUMNS}
    d["cfg_scale"] = float(d["cfg_scale"])
    d["model_specific_params"] = json.loads(d["model_specific_params"])
    d["extra_fields"] = json.loads(d["extra_fields"])
    d["mongo_id"] = json.loads(d["mongo_id"]) if d["mongo_id"] is not None else None
    return d


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in DOC_FIELDS}
    out["origin"] = "model"
    out["source"] = None
    return out


def _not_found(preset_id: str) -> ValidationFailed:
    return ValidationFailed(f"no preset with id {preset_id!r}", [{"path": "data.id", "message": f"unknown preset id {preset_id!r}"}])


def _conflict(model_id: str, ctype: str, other_id: str, path: str = "data.configuration_type") -> ValidationFailed:
    return ValidationFailed(
        f"a {ctype} preset for model {model_id!r} already exists: conflicts with preset id {other_id}",
        [{"path": path, "message": f"conflicts with preset id {other_id} (model_id and configuration_type are unique together)"}],
    )


def _where(model_id: str | None, base_model: str | None, configuration_type: str | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    for col, val in (("model_id", model_id), ("base_model", base_model), ("configuration_type", configuration_type)):
        if val is not None:
            clauses.append(f"{col} = ?")
            args.append(val)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args
