"""base_model (contract section 7) -> the family that generates with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Family
from .flux import FluxFamily
from .hidream import HiDreamFamily
from .sd import SDFamily
from .sd3 import SD3Family
from .wan import WanFamily

FAMILIES: tuple[Family, ...] = (SDFamily(), FluxFamily(), WanFamily(), HiDreamFamily(), SD3Family())

_BY_BASE: dict[str, Family] = {}
for _family in FAMILIES:
    for _base in _family.base_models:
        if _base in _BY_BASE:  # one family per base model, never a silent override
            raise RuntimeError(f"base model {_base!r} is claimed by families {_BY_BASE[_base].name} and {_family.name}")
        _BY_BASE[_base] = _family


def for_base_model(base_model: str) -> Family | None:
    """The family of `base_model`; None when no family generates with it (sd3, unknown, ...)."""
    return _BY_BASE.get(base_model)


def supported_base_models() -> tuple[str, ...]:
    """Every base model some family generates with, in registry order."""
    return tuple(_BY_BASE)


_BY_PIPELINE: dict[str, Family] = {cls: fam for fam in FAMILIES for cls in fam.model_index_classes}


def folder_base_model(folder: Path, index: dict[str, Any]) -> str:
    """The base model of a diffusers folder, told by the family its model_index.json class names;
    "unknown" when no family runs that class."""
    family = _BY_PIPELINE.get(str(index.get("_class_name", "")))
    return family.folder_base_model(folder, index) if family is not None else "unknown"


def tiny_arches() -> dict[str, str]:
    """make_tiny_model's family arches: arch -> the module (under sdworker) that builds it."""
    return {arch: module for fam in FAMILIES for arch, module in fam.tiny_arches.items()}
