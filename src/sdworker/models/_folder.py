"""Detect diffusers folders from their JSON configs alone (no weights are opened).

A pipeline folder has ``model_index.json`` (pipeline class + component classes); a component
folder (a lone VAE, ControlNet, U-Net, transformer or text encoder) has only ``config.json``.
Which base model a class or config means is the families' knowledge (Family.detect_folder,
detect_component, vae_scaling, refine_folder_base), asked through families.registry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..paths import read_regular
from ._types import Detection

_MAX_CONFIG_BYTES = 8 * 2**20  # configs are a few KB; a bigger "config" is not one


def _strict_json(path: Path) -> dict[str, Any]:
    """A config file's JSON object; ValueError saying what is wrong otherwise (never a FIFO read)."""
    try:
        data = json.loads(read_regular(path, _MAX_CONFIG_BYTES))
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def config_json(path: Path) -> dict[str, Any]:
    try:
        return _strict_json(path)
    except ValueError:
        return {}


def _present(value: Any) -> bool:
    """model_index.json marks an absent component as null or [null, null]."""
    return value is not None and value != [None, None]


def _pipeline(folder: Path, index: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    cls = str(index.get("_class_name", ""))
    unet = config_json(folder / "unet" / "config.json")
    details: dict[str, Any] = {
        "pipeline_class": cls,
        "components": sorted(k for k, v in index.items() if not k.startswith("_") and _present(v)),
    }
    if unet:
        details["unet"] = {
            k: unet[k]
            for k in ("cross_attention_dim", "addition_embed_type", "projection_class_embeddings_input_dim", "in_channels")
            if k in unet
        }
    from ..families import registry

    return registry.detect_folder(folder, index, unet), details


def _component(cfg: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    from ..families import registry

    cls = str(cfg.get("_class_name") or (cfg.get("architectures") or [""])[0])
    details: dict[str, Any] = {"class": cls}
    if cls in ("AutoencoderKL", "AutoencoderTiny"):
        details["latent_channels"] = cfg.get("latent_channels")
        scaling = cfg.get("scaling_factor")
        known = isinstance(scaling, (int, float)) and not isinstance(scaling, bool)
        base = next((b for s, b in registry.vae_scaling().items() if known and abs(scaling - s) < 1e-4), "unknown")
        return "vae", base, details
    found = registry.detect_component(cls, cfg)
    if found is not None:
        return found[0], found[1], details
    if cls.startswith(("CLIPText", "T5Encoder", "T5ForConditional")):
        details["hidden_size"] = cfg.get("hidden_size") or cfg.get("d_model")
        return "text_encoder", "unknown", details
    return "unknown", "unknown", details


def detect_diffusers_folder(path: str | os.PathLike[str]) -> Detection:
    """Detection for a diffusers pipeline folder (model_index.json) or a component folder (config.json)."""
    folder = Path(path)
    index_path = folder / "model_index.json"
    if index_path.is_file():
        index = _strict_json(index_path)
        if not isinstance(index.get("_class_name"), str) or not index["_class_name"]:
            raise ValueError(f"{index_path} is not a diffusers model_index.json (_class_name is {index.get('_class_name')!r}, not a class name)")
        base, details = _pipeline(folder, index)
        kind = "checkpoint"
    elif (folder / "config.json").is_file():
        cfg = _strict_json(folder / "config.json")
        if not cfg:
            raise ValueError(f"{folder / 'config.json'} is an empty JSON object")
        kind, base, details = _component(cfg)
    else:
        raise ValueError(f"{folder} is not a diffusers folder (no model_index.json or config.json)")
    from ..families import registry

    base = registry.refine_folder_base(base, folder.name)
    return Detection(kind, base, "diffusers", details)
