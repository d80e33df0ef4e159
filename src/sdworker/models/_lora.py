"""LoRA and textual-inversion detection: formats, and the base model their dims imply.

A LoRA's "down" matrix has shape ``[rank, in_features]``, so the down matrix of a U-Net
cross-attention key projection (``attn2.to_k``) reveals the text context width (768 SD 1.x,
1024 SD 2.x, 2048 SDXL), and a text-encoder projection reveals the encoder width. A second
text encoder (kohya ``lora_te2_*``, diffusers ``text_encoder_2.*``) means SDXL. DiT families'
key groups and joint-attention widths are theirs (Family.lora_markers, lora_dit_widths).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from . import _hints

Shapes = Mapping[str, tuple[int, ...]]
Found = tuple[str, str, dict[str, Any]]

_MARKERS = ("lora_down", "lora_up", "lora_A.", "lora_B.", "lora.down", "lora.up", "hada_w1", "lokr_w1", "lokr_w2")
_KOHYA = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")
_DOWN = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "hada_w1_b", "hada_w2_b")
_TE1 = ("lora_te_", "lora_te1_", "text_encoder.", "te.", "te1.", "lora_te1.")
_TE2 = ("lora_te2_", "text_encoder_2.", "te2.")
_UNET_BLOCKS = ("down_blocks_", "up_blocks_", "mid_block_", "input_blocks_", "output_blocks_", "middle_block_")
_CONTEXT_BASE = {768: "sd_1_5", 1024: "sd_2", 2048: "sdxl", 1280: "sdxl_refiner"}
_TE_BASE = {768: "sd_1_5", 1024: "sd_2"}
_DEEP_BLOCK = re.compile(r"transformer_blocks_[1-9]")


def is_lora(shapes: Shapes) -> bool:
    return any(k.startswith(_KOHYA) or any(m in k for m in _MARKERS) for k in shapes)


def _norm(key: str) -> str:
    """kohya flattens module paths with '_'; compare everything in that form."""
    return key.replace(".", "_")


def _format(keys: list[str]) -> str:
    if any("hada_" in k or "lokr_" in k for k in keys):
        return "lycoris"
    if any(k.startswith(_KOHYA) for k in keys):
        return "kohya"
    if any("lora_A." in k for k in keys):
        return "peft"
    return "diffusers"


def _down_dim(shapes: Shapes, *needles: str, prefixes: tuple[str, ...] = ()) -> int | None:
    """in_features of the first LoRA down matrix whose key contains all ``needles``."""
    for key, shape in shapes.items():
        if not key.endswith(_DOWN) or len(shape) < 2:
            continue
        if prefixes and not key.startswith(prefixes):
            continue
        nk = _norm(key)
        if all(n in nk for n in needles):
            return shape[1]
    return None


def _base_from_keys(shapes: Shapes, details: dict[str, Any]) -> str:
    keys = list(shapes)
    norm = [_norm(k) for k in keys]
    from ..families import registry

    family = registry.lora_family(norm)  # key groups only one family's LoRAs have (Family.lora_markers)
    if family is not None:
        return family.lora_base(norm, details)
    if any("transformer_blocks_" in nk and not any(b in nk for b in _UNET_BLOCKS) for nk in norm):
        if any(m in nk for nk in norm for m in ("img_mlp", "txt_mlp", "img_mod")):
            details["family"] = "other_dit"
            return "unknown"
        width = _down_dim(shapes, "_attn_to_k") or _down_dim(shapes, "_attn_to_q")  # joint attn, not attn1/attn2
        details["family"] = "dit"
        if width:
            details["hidden_size"] = width
        return registry.lora_dit_widths().get(width or 0, "unknown")
    details["family"] = "sd_unet"
    if any(k.startswith(_TE2) for k in keys):
        details["text_encoders"] = 2
        return "sdxl"
    ctx = _down_dim(shapes, "attn2", "to_k")
    if ctx:
        details["context_dim"] = ctx
        return _CONTEXT_BASE.get(ctx, "unknown")
    te = _down_dim(shapes, "_proj", prefixes=_TE1) or _down_dim(shapes, "mlp_fc1", prefixes=_TE1)
    if te:
        details["text_encoder_dim"] = te
        return _TE_BASE.get(te, "unknown")
    if any(_DEEP_BLOCK.search(nk) or "label_emb" in nk for nk in norm):
        return "sdxl"  # SD 1.x/2.x U-Nets have a single transformer block per attention
    return "unknown"


def detect_lora(shapes: Shapes, metadata: Mapping[str, str]) -> Found:
    keys = list(shapes)
    details: dict[str, Any] = {"lora_format": _format(keys)}
    rank = next((s[0] for k, s in shapes.items() if k.endswith(_DOWN) and s), None)
    if rank:
        details["rank"] = rank
    base = _base_from_keys(shapes, details)
    declared = _hints.base_from_metadata(metadata)
    if declared:
        details["base_from_metadata"] = declared
    details["base_from"] = "keys" if base != "unknown" else ("metadata" if declared else "none")
    if declared and (base == "unknown" or (base == "flux" and declared.startswith("flux_"))):
        base = declared  # the keys say Flux; the metadata may say which one
    return "lora", base, details


def detect_embedding(shapes: Shapes) -> Found | None:
    """Textual inversion: A1111 ``emb_params``/``string_to_param``, SDXL ``clip_l``+``clip_g``, diffusers token."""
    if "clip_l" in shapes and "clip_g" in shapes:
        g = shapes["clip_g"]
        return "embedding", "sdxl", {"embedding_format": "sdxl", "vectors": g[0] if len(g) == 2 else 1, "dim": 768 + g[-1]}
    vec_key = "emb_params" if "emb_params" in shapes else None
    fmt = "a1111"
    if vec_key is None and shapes and all(k.startswith("string_to_param.") for k in shapes):
        vec_key = next(iter(shapes))
    if vec_key is None and len(shapes) == 1:
        only = next(iter(shapes))
        if "." not in only and 1 <= len(shapes[only]) <= 2 and shapes[only][-1] in (768, 1024):
            vec_key, fmt = only, "diffusers"
    if vec_key is None:
        return None
    shape = shapes[vec_key]
    if not shape or len(shape) > 2:
        return None
    dim = shape[-1]
    details = {"embedding_format": fmt, "vectors": shape[0] if len(shape) == 2 else 1, "dim": dim}
    if fmt == "diffusers":
        details["token"] = vec_key
    return "embedding", _TE_BASE.get(dim, "unknown"), details
