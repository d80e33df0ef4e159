"""A diffusers Flux transformer state dict in Black Forest Labs' own key layout (flux1-dev.safetensors).

BFL's files fuse q/k/v (and, in single blocks, the MLP input) into one matrix and order the final
modulation shift-then-scale; diffusers splits and swaps them when it loads one. This is that
conversion run backwards, so tests can write BFL-layout files. diffusers' loader assumes FLUX.1's
width (3072, MLP ratio 4) when it splits single blocks, so only full-width transformers round-trip.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

#: diffusers name -> BFL name, for the tensors that only change their name (".weight"/".bias" follow).
_TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
_DOUBLE = {
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
}
_DOUBLE_NORMS = {
    "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
}
_DOUBLE_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
#: (diffusers block prefix, BFL block prefix, renamed, norms, fused) for double and single blocks
_BLOCK_KINDS = (
    ("transformer_blocks.", "double_blocks.", _DOUBLE, _DOUBLE_NORMS, _DOUBLE_QKV),
    ("single_transformer_blocks.", "single_blocks.", _SINGLE, _SINGLE_NORMS, _SINGLE_FUSED),
)


def _blocks(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)})


def flux_to_bfl(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The BFL-layout state dict of a diffusers FluxTransformer2DModel state dict."""
    out: dict[str, torch.Tensor] = {}

    def move(src: str, dst: str, suffixes: tuple[str, ...] = (".weight", ".bias")) -> None:
        for sfx in suffixes:
            if src + sfx in state:
                out[dst + sfx] = state[src + sfx]

    def fuse(srcs: tuple[str, ...], dst: str) -> None:
        for sfx in (".weight", ".bias"):
            out[dst + sfx] = torch.cat([state[s + sfx] for s in srcs], dim=0)

    for src, dst in _TOP.items():
        move(src, dst)
    for sfx in (".weight", ".bias"):  # diffusers' AdaLayerNormContinuous is scale-then-shift; BFL's is shift-then-scale
        scale, shift = state[f"norm_out.linear{sfx}"].chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1{sfx}"] = torch.cat([shift, scale], dim=0)
    for src_prefix, dst_prefix, renamed, norms, fused in _BLOCK_KINDS:
        for i in _blocks(state, src_prefix):
            src, dst = f"{src_prefix}{i}.", f"{dst_prefix}{i}."
            for a, b in renamed.items():
                move(src + a, dst + b)
            for a, b in norms.items():  # RMSNorm weights: BFL calls them "scale"
                out[f"{dst}{b}.scale"] = state[f"{src}{a}.weight"]
            for b, parts in fused.items():
                fuse(tuple(src + part for part in parts), dst + b)
    return out
