"""A diffusers Wan transformer state dict in Wan's own key layout (the official and ComfyUI files).

Wan-AI's checkpoints and ComfyUI's repacks (`wan2.1_t2v_1.3B_fp16.safetensors`) name the layers as
the original code does (`self_attn.q`, `ffn.0`, `head.head`, `modulation`, and norm3 where diffusers
says norm2); diffusers renames them when it loads one. This is that renaming run backwards, so tests
can write files in the layout people download. Only names change; no tensor is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

#: whole-name prefixes outside the blocks, diffusers -> original
_TOP = (
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("proj_out.", "head.head."),
)
#: parts of a block key, diffusers -> original (each applied once, in this order)
_BLOCK = (
    ("attn1.", "self_attn."), ("attn2.", "cross_attn."),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj.", "ffn.0."), ("ffn.net.2.", "ffn.2."),
)
_NORM_SWAP = re.compile(r"\.norm([23])\.")  # diffusers' norm2 is the original norm3 and the reverse


def _block_key(rest: str) -> str:
    for a, b in _BLOCK:
        rest = rest.replace(a, b, 1)
    rest = _NORM_SWAP.sub(lambda m: ".norm3." if m.group(1) == "2" else ".norm2.", "." + rest)[1:]
    return "modulation" if rest == "scale_shift_table" else rest


def original_key(key: str) -> str:
    """One diffusers Wan transformer key in the original layout."""
    if key == "scale_shift_table":
        return "head.modulation"
    m = re.match(r"(blocks\.\d+\.)(.*)", key)
    if m:
        return m.group(1) + _block_key(m.group(2))
    for a, b in _TOP:
        if key.startswith(a):
            return b + key[len(a):]
    return key  # patch_embedding.* keeps its name


def wan_to_original(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The original-layout state dict (with ComfyUI's "model.diffusion_model." as `prefix` if given)."""
    return {prefix + original_key(k): v for k, v in state.items()}
