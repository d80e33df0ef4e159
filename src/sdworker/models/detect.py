"""Decide what a model file is (kind + contract base_model id) from tensor names and shapes.

Works on ``{key: shape}`` as read by :mod:`.safetensors_header`, so nothing is loaded. Both
the original single-file layouts (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.*``, ``conditioner.embedders.*``, BFL/SAI bare keys) and diffusers layouts
(``down_blocks.*``, ``transformer_blocks.*``) are understood. The facts used are the ones
diffusers' ``single_file_utils`` and ComfyUI's model detection rely on; each family's are in its
package (Family.detect_denoiser, detect_controlnet, refine_base), asked through families.registry:

* SD U-Nets: the cross-attention context width (``attn2.to_k.weight`` input dim) is 768 for
  SD 1.x, 1024 for SD 2.x, 2048 for SDXL base and 1280 for the SDXL refiner; the SDXL "adm"
  vector (``label_emb.0.0.weight`` / ``add_embedding.linear_1.weight`` input) is 2816 for the
  base and 2560 for the refiner.
* SD3 has ``joint_blocks`` (diffusers: ``transformer_blocks`` + ``pos_embed``); Flux has
  ``double_blocks``/``single_blocks`` (diffusers: ``single_transformer_blocks``) and only
  Flux dev carries a guidance embedder (``guidance_in.*`` /
  ``time_text_embed.guidance_embedder.*``), schnell lacks it.
* HiDream-I1 has ``double_stream_blocks`` + ``caption_projection`` (diffusers' names, also in
  ComfyUI's single files); Full, Dev and Fast share one shape.
* An SD VAE is the same network for SD 1.x, 2.x and SDXL (only the weights differ), so a VAE's
  base is ``unknown`` unless its file name or metadata names one. 16-channel VAEs are Flux/SD3.
* Pony is SDXL by shape; it is told apart only by metadata or the file name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import _hints
from ._folder import detect_diffusers_folder
from ._lora import detect_embedding, detect_lora, is_lora
from ._pickles import PICKLE_SUFFIXES, guess_from_path
from ._types import BASE_MODELS, KINDS, Detection
from .gguf_header import GGUFHeader, read_gguf_header
from .safetensors_header import read_header
from .shapes import first_dim as _first_dim
from .shapes import has_prefix as _has_prefix
from .shapes import sub as _sub

__all__ = [
    "BASE_MODELS",
    "KINDS",
    "PICKLE_SUFFIXES",
    "Detection",
    "detect",
    "detect_diffusers_folder",
    "detect_file",
    "detect_gguf",
    "guess_from_path",
]

Shapes = Mapping[str, Sequence[int]]


_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIXES = ("first_stage_model.", "vae.")
_TE_PREFIXES = ("cond_stage_model.", "conditioner.", "text_encoders.")


def detect(
    shapes: Shapes,
    metadata: Mapping[str, str] | None = None,
    name: str | None = None,
    format: str = "safetensors",
) -> Detection:
    """Classify a state dict given as ``{key: shape}``; ``name`` is the file name (hints only)."""
    md = dict(metadata or {})
    norm = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
    found = (
        detect_embedding(norm)
        or _controlnet(norm)
        or (detect_lora(norm, md) if is_lora(norm) else None)
        or _diffusion(norm, md)
        or _vae(norm, md, name)
        or _text_encoder(norm)
        or _upscaler(norm)
    )
    if found is None:
        kind = _hints.kind_from_metadata(md) or "unknown"
        base = _hints.base_from_metadata(md) or "unknown"
        found = (kind, base, {"evidence": "metadata" if (kind, base) != ("unknown", "unknown") else "none"})
    kind, base, details = found
    base = _refine_base(kind, base, md, name)
    return Detection(kind, base, format, details)


def detect_file(path: str | os.PathLike[str]) -> Detection:
    """Detect a single model file (safetensors or GGUF header, or the name of a pickle) or a diffusers folder."""
    p = Path(path)
    if p.is_dir():
        return detect_diffusers_folder(p)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return guess_from_path(p)
    if p.suffix.lower() == ".gguf":
        return detect_gguf(read_gguf_header(p), p.name)
    header = read_header(p)
    return detect(header.shapes(), header.metadata, p.name)


def detect_gguf(header: GGUFHeader, name: str | None = None) -> Detection:
    """Classify a GGUF file from its header; details add the main quantization type ("Q8_0", ...)."""
    found = detect(header.shapes, header.metadata, name, format="gguf")
    return Detection(found.kind, found.base_model, "gguf", {**found.details, "quantization": header.quantization})


def _refine_base(kind: str, base: str, md: Mapping[str, str], name: str | None) -> str:
    """Pony over SDXL, Flux dev/schnell/krea, Wan 2.2 experts: where shapes alone cannot say (the family says)."""
    from ..families import registry

    return registry.refine_base(kind, base, md, name)


# ---- diffusion models (whole checkpoints and bare U-Nets/transformers) ------------------------------


def _text_encoders(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Which text encoders a single-file checkpoint bundles, by their key prefixes."""
    found = []
    for prefix, name in (
        ("cond_stage_model.transformer.", "clip_l"),
        ("cond_stage_model.model.", "open_clip_h"),
        ("conditioner.embedders.0.transformer.", "clip_l"),
        ("conditioner.embedders.0.model.", "open_clip_g"),
        ("conditioner.embedders.1.model.", "open_clip_g"),
        ("text_encoders.clip_l.", "clip_l"),
        ("text_encoders.clip_g.", "clip_g"),
        ("text_encoders.t5xxl.", "t5xxl"),
    ):
        if _has_prefix(shapes, prefix) and name not in found:
            found.append(name)
    return found


def _diffusion(shapes: dict[str, tuple[int, ...]], md: Mapping[str, str]) -> tuple[str, str, dict] | None:
    prefixed = _has_prefix(shapes, _UNET_PREFIX)
    unet = _sub(shapes, _UNET_PREFIX) if prefixed else shapes
    from ..families import registry

    result = registry.detect_denoiser(unet, shapes)  # each family reads its own tensor names
    if result is None:
        return None
    base, details = result
    has_vae = _has_prefix(shapes, *_VAE_PREFIXES)
    encoders = _text_encoders(shapes)
    details = {**details, "has_vae": has_vae, "text_encoders": encoders}
    kind = "checkpoint" if prefixed and (has_vae or encoders) else "unet"
    if base == "unknown":
        base = _hints.base_from_metadata(md) or "unknown"
    prediction = md.get("modelspec.prediction_type")
    if "v_pred" in shapes or prediction == "v":
        details["prediction_type"] = "v"
    return kind, base, details


# ---- controlnet -----------------------------------------------------------------------------------

_CONTROL_MARKERS = (
    "input_hint_block.", "zero_convs.", "middle_block_out.", "controlnet_cond_embedding.",
    "controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_blocks.", "controlnet_single_blocks.",
    "controlnet_x_embedder.", "pos_embed_input.",
)


def _controlnet(shapes: dict[str, tuple[int, ...]]) -> tuple[str, str, dict] | None:
    body = _sub(shapes, "control_model.") if _has_prefix(shapes, "control_model.") else shapes
    control_lora = "lora_controlnet" in shapes
    if not (control_lora or _has_prefix(body, *_CONTROL_MARKERS)):
        return None
    details: dict[str, Any] = {"layout": "diffusers" if _has_prefix(body, "controlnet_") else "original"}
    if control_lora:
        details["control_lora"] = True
    from ..families import registry

    base, details = registry.detect_controlnet(body, details)
    return "controlnet", base, details


# ---- VAE, text encoders, upscalers ---------------------------------------------------------------


def _vae(shapes: dict[str, tuple[int, ...]], md: Mapping[str, str], name: str | None) -> tuple[str, str, dict] | None:
    body = shapes
    for prefix in _VAE_PREFIXES:
        if shapes and all(k.startswith(prefix) for k in shapes):
            body = _sub(shapes, prefix)
    if "encoder.conv_in.weight" not in body and "decoder.conv_in.weight" not in body:
        return None
    layout = "diffusers" if _has_prefix(body, "encoder.down_blocks.", "decoder.up_blocks.") else "original"
    latent = _first_dim(body, ("decoder.conv_in.weight",), 1)
    if latent is None:
        out = _first_dim(body, ("encoder.conv_out.weight",), 0)
        latent = out // 2 if out else None
    details: dict[str, Any] = {"layout": layout, "latent_channels": latent}
    hint = _hints.base_from_metadata(md) or _hints.base_from_text(name) or _hints.base_from_text(md.get("modelspec.title"))
    from ..families import registry

    # the families say which bases a VAE of this latent width may be named for, and under which base
    # it is filed (Pony's is SDXL's, turned back by _refine_base when metadata says so; Flux's is flux)
    base = registry.vae_base(hint) if hint in registry.vae_latent_bases(latent or 0) else "unknown"
    details["base_from"] = "name_or_metadata" if base != "unknown" else "indistinguishable_by_shape"
    return "vae", base, details


def _text_encoder(shapes: dict[str, tuple[int, ...]]) -> tuple[str, str, dict] | None:
    encoders: list[str] = []
    for key, shape in shapes.items():
        if key.endswith("embeddings.token_embedding.weight") and len(shape) == 2:  # HF CLIP (text_model. optional)
            encoders.append({768: "clip_l", 1024: "clip_h", 1280: "clip_g"}.get(shape[1], f"clip_{shape[1]}"))
        elif key.endswith("token_embedding.weight") and len(shape) == 2:  # OpenCLIP
            encoders.append({1024: "open_clip_h", 1280: "open_clip_g"}.get(shape[1], f"open_clip_{shape[1]}"))
        elif key.endswith("shared.weight") and len(shape) == 2:  # T5: shared embedding + encoder blocks
            if not _has_prefix(shapes, key[: -len("shared.weight")] + "encoder.block."):
                continue
            encoders.append("t5xxl" if shape[1] == 4096 else f"t5_{shape[1]}")
    if not encoders:
        return None
    from ..families import registry

    base = registry.text_encoder_base(frozenset(encoders))  # OpenCLIP-H alone: SD 2.x (the family says)
    return "text_encoder", base, {"encoders": sorted(set(encoders))}


def _upscaler(shapes: dict[str, tuple[int, ...]]) -> tuple[str, str, dict] | None:
    body = shapes
    for prefix in ("params_ema.", "params.", "module."):
        if shapes and all(k.startswith(prefix) for k in shapes):
            body = _sub(shapes, prefix)
    keys = list(body)
    arch = None
    if "model.0.weight" in body and any(k.startswith("model.1.sub.") for k in keys):
        arch = "esrgan"
    elif "conv_first.weight" in body:
        if any(k.startswith(("RRDB_trunk.", "body.")) and ".rdb" in k.lower() for k in keys):
            arch = "esrgan"
        elif _has_prefix(body, "layers."):
            arch = "swinir"
        else:
            arch = "sr"
    elif "body.0.weight" in body and all(k.startswith("body.") for k in keys) and len(body["body.0.weight"]) == 4:
        arch = "realesrgan_compact"
    elif (s := body.get("model.0.weight")) and len(s) == 4 and s[1] in (1, 3, 4) and all(k.startswith("model.") for k in keys):
        arch = "esrgan"
    if arch is None:
        return None
    return "upscaler", "unknown", {"arch": arch}
