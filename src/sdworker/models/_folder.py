"""Detect diffusers folders from their JSON configs alone (no weights are opened).

A pipeline folder has ``model_index.json`` (pipeline class + component classes); a component
folder (a lone VAE, ControlNet, U-Net, transformer or text encoder) has only ``config.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..paths import read_regular
from . import _hints
from ._types import Detection

_CONTEXT_BASE = {768: "sd_1_5", 1024: "sd_2", 2048: "sdxl", 1280: "sdxl_refiner"}
# AutoencoderKL scaling factors of the reference configs: the one field that tells the VAEs apart.
_VAE_SCALING = {0.13025: "sdxl", 0.3611: "flux", 1.5305: "sd3"}


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


def _json(path: Path) -> dict[str, Any]:
    try:
        return _strict_json(path)
    except ValueError:
        return {}


def _present(value: Any) -> bool:
    """model_index.json marks an absent component as null or [null, null]."""
    return value is not None and value != [None, None]


def _unet_base(cfg: dict[str, Any]) -> str:
    proj = cfg.get("projection_class_embeddings_input_dim")
    if proj == 2560:
        return "sdxl_refiner"
    if proj == 2816 or cfg.get("addition_embed_type") == "text_time":
        return "sdxl_refiner" if cfg.get("cross_attention_dim") == 1280 else "sdxl"
    ctx = cfg.get("cross_attention_dim")
    return _CONTEXT_BASE.get(ctx, "unknown") if isinstance(ctx, int) else "unknown"


def _flux_base(cfg: dict[str, Any]) -> str:
    embeds = cfg.get("guidance_embeds")
    return "flux_dev" if embeds is True else "flux_schnell" if embeds is False else "flux"


def _pipeline(folder: Path, index: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    cls = str(index.get("_class_name", ""))
    unet = _json(folder / "unet" / "config.json")
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
    if cls.startswith("StableDiffusionXL"):
        no_clip_l = "text_encoder" in index and not _present(index["text_encoder"])
        refiner = no_clip_l or bool(index.get("requires_aesthetics_score"))
        return ("sdxl_refiner" if refiner or _unet_base(unet) == "sdxl_refiner" else "sdxl"), details
    if cls.startswith("StableDiffusion3"):
        return "sd3", details
    if cls.startswith("Flux") and not cls.startswith("Flux2"):
        return _flux_base(_json(folder / "transformer" / "config.json")), details
    if cls.startswith("Wan"):  # Wan 2.1 / 2.2 video (families/wan.py tells the two apart)
        from ..families.wan import wan_base

        return wan_base(index, folder.name), details
    if cls.startswith("HiDreamImage"):  # HiDream-I1 Full/Dev/Fast: one base model (families/hidream.py)
        return "hidream", details
    if cls.startswith(("StableDiffusion", "AltDiffusion")):
        return ("sd_2" if unet.get("cross_attention_dim") == 1024 else "sd_1_5"), details
    return (_unet_base(unet) if unet else "unknown"), details


def _component(cfg: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    cls = str(cfg.get("_class_name") or (cfg.get("architectures") or [""])[0])
    details: dict[str, Any] = {"class": cls}
    if cls in ("AutoencoderKL", "AutoencoderTiny"):
        details["latent_channels"] = cfg.get("latent_channels")
        scaling = cfg.get("scaling_factor")
        known = isinstance(scaling, (int, float)) and not isinstance(scaling, bool)
        base = next((b for s, b in _VAE_SCALING.items() if known and abs(scaling - s) < 1e-4), "unknown")
        return "vae", base, details
    if cls == "ControlNetModel":
        return "controlnet", _unet_base(cfg), details
    if cls in ("FluxControlNetModel", "FluxMultiControlNetModel"):
        return "controlnet", "flux", details
    if cls.startswith("SD3ControlNet"):
        return "controlnet", "sd3", details
    if cls == "UNet2DConditionModel":
        return "unet", _unet_base(cfg), details
    if cls == "FluxTransformer2DModel":
        return "unet", _flux_base(cfg), details
    if cls == "HiDreamImageTransformer2DModel":
        return "unet", "hidream", details
    if cls == "SD3Transformer2DModel":
        return "unet", "sd3", details
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
    if base == "sdxl" and "pony" in folder.name.lower():
        base = "pony"
    named = _hints.base_from_text(folder.name)
    if (base == "flux" and named in ("flux_dev", "flux_schnell", "flux_krea")) or (base == "flux_dev" and named == "flux_krea"):
        base = named
    return Detection(kind, base, "diffusers", details)
