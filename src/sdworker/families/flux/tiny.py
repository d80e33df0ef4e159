"""Tiny, random-weight Flux pipelines (FLUX.1 dev, schnell and Fill layouts), LoRAs and ControlNets.

Same idea as :mod:`sdworker.tiny.builder`: the real classes (FluxTransformer2DModel, a 16-channel
AutoencoderKL without quant convs, CLIPTextModel, T5EncoderModel, FlowMatchEulerDiscreteScheduler)
at tiny sizes, each component seeded on its own, nothing downloaded. What tells dev from schnell
is what tells the real checkpoints apart: dev's transformer has a guidance embedder
(``guidance_embeds``) and its scheduler shifts by resolution (``use_dynamic_shifting``);
schnell has neither.

Sizes: the VAE has two blocks, so ``vae_scale_factor`` is 2 and Flux's 2x2 latent packing needs
width and height divisible by 4; a 64x64 image is 32x32 latents, 256 packed tokens of 64
channels (16 latent channels x 4). The Fill variant's transformer reads the packed latents, the
packed masked-image latents and the packed mask side by side: 64 + 64 + 16 input channels
(the mask packs vae_scale_factor**2 x 4 channels: 4 x 4 here, 64 x 4 for FLUX.1's factor 8, which
is how the real Fill model gets to 384), and outputs 64. The T5 tokenizer is a Unigram vocabulary built here from a
word list (no sentencepiece model, no download), loaded as ``T5TokenizerFast``.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxControlNetModel,
    FluxFillPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

from ...tiny import tokenizer as tok
from ...tiny.builder import FLUX_ARCHES, TEXT_HIDDEN_SIZE, _text_config, save_staged

#: The tiny Flux pipelines; "flux-fill" is FLUX.1 Fill (dev), the inpainting model.
VARIANTS: tuple[str, ...] = (*FLUX_ARCHES, "flux-fill")

#: One seed per component (distinct from the SD builders' seeds).
SEEDS: dict[str, int] = {"transformer": 10, "vae": 11, "text_encoder": 12, "text_encoder_2": 13, "controlnet": 14, "lora": 15}

T5_D_MODEL = 32
#: The real Flux T5 tokenizer's model_max_length; dev encodes 512 tokens, schnell 256.
T5_MAX_LENGTH = 512
LATENT_CHANNELS = 16

# FLUX.1-dev's vae/config.json, shrunk to two 32/64-channel blocks.
FLUX_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": LATENT_CHANNELS,
    "sample_size": 128,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}

_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": LATENT_CHANNELS * 4,  # 2x2 packed latents
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_D_MODEL,  # T5 hidden states
    "pooled_projection_dim": TEXT_HIDDEN_SIZE,  # CLIP's pooled output (CLIPTextModel.pooler_output)
    "axes_dims_rope": (4, 6, 6),  # sums to attention_head_dim
}
#: The Fill transformer's input: latents + masked-image latents (64 each, packed) + the packed mask
#: (the VAE's 2x2 pixels per latent, times the 2x2 packing).
FILL_IN_CHANNELS = 2 * LATENT_CHANNELS * 4 + 2 * 2 * 4
TRANSFORMERS: dict[str, dict[str, Any]] = {
    "flux-dev": {**_TRANSFORMER, "guidance_embeds": True},
    "flux-schnell": {**_TRANSFORMER, "guidance_embeds": False},
    "flux-fill": {**_TRANSFORMER, "in_channels": FILL_IN_CHANNELS, "out_channels": LATENT_CHANNELS * 4, "guidance_embeds": True},
}

# The real checkpoints' scheduler/scheduler_config.json.
SCHEDULERS: dict[str, dict[str, Any]] = {
    "flux-dev": {
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
    "flux-schnell": {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False},
}
SCHEDULERS["flux-fill"] = SCHEDULERS["flux-dev"]  # FLUX.1-Fill-dev ships dev's scheduler config

# ---- the T5 tokenizer: a Unigram vocabulary from a word list -----------------------------------

T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
_SPACE = "\u2581"  # SentencePiece's word-boundary mark
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.!?:;'()[]-_/"


def t5_vocab() -> list[tuple[str, float]]:
    """(piece, log-probability) in T5's layout: <pad>=0, </s>=1, <unk>=2, then the pieces.

    Whole words from the tiny CLIP tokenizer's prompt corpus score by frequency; single
    characters (with and without the word-start mark) score low, so known words stay one piece
    and anything else still encodes, character by character.
    """
    words = Counter(tok._CORPUS)
    total = sum(words.values())
    pieces: list[tuple[str, float]] = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0), (_SPACE, -4.0)]
    for word in sorted(words):
        pieces.append((_SPACE + word, round(math.log(words[word] / total), 4)))
    seen = {p for p, _ in pieces}
    for ch in _CHARS:
        for piece in (_SPACE + ch, ch):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -12.0))
    return pieces


def t5_tokenizer() -> T5TokenizerFast:
    return T5TokenizerFast(
        vocab=t5_vocab(), eos_token=T5_EOS, unk_token=T5_UNK, pad_token=T5_PAD, extra_ids=0, model_max_length=T5_MAX_LENGTH
    )


def t5_shape(d_model: int = T5_D_MODEL) -> dict[str, Any]:
    """The tiny T5 v1.1 encoder's config (gated-gelu, untied embeddings), shared by the T5 (Flux,
    HiDream) and UMT5 (Wan) fixtures; the vocabulary is t5_vocab()'s."""
    return {
        "vocab_size": len(t5_vocab()),
        "d_model": d_model,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32,
        "dropout_rate": 0.0,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "is_encoder_decoder": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def t5_config() -> T5Config:
    """T5 v1.1 like Flux's google/t5-v1_1-xxl, at d_model 32."""
    return T5Config(**t5_shape())


# ---- the pipeline -------------------------------------------------------------------------------


def _seeded(name: str) -> None:
    torch.manual_seed(SEEDS[name])


def build_flux_pipeline(variant: str, scratch: str | Path) -> FluxPipeline | FluxFillPipeline:
    """The in-memory tiny Flux pipeline of ``variant``; ``scratch`` receives the CLIP tokenizer files."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Flux variant {variant!r}; expected one of {VARIANTS}")
    _seeded("transformer")
    transformer = FluxTransformer2DModel(**TRANSFORMERS[variant])
    _seeded("vae")
    vae = AutoencoderKL(**FLUX_VAE)
    _seeded("text_encoder")
    text_encoder = CLIPTextModel(_text_config(tok.PAD_EOS))  # the tiny SD CLIP-L: hidden 32, the tiny vocab
    _seeded("text_encoder_2")
    text_encoder_2 = T5EncoderModel(t5_config())
    tokenizer = tok.load_tokenizer(tok.write_tokenizer_files(Path(scratch) / "tokenizer", tok.PAD_EOS))
    cls = FluxFillPipeline if variant == "flux-fill" else FluxPipeline
    return cls(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULERS[variant]),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )


def make_tiny(arch: str, out_dir: str | Path) -> Path:
    """make_tiny_model's entry for the Flux arches ("flux" = flux-dev)."""
    return make_tiny_flux("flux-dev" if arch == "flux" else arch, out_dir)


def make_tiny_flux(variant: str, out_dir: str | Path) -> Path:
    """Build and save the tiny ``variant`` Flux pipeline to ``out_dir`` (diffusers layout).

    Like :func:`sdworker.tiny.builder.make_tiny_model`: staged in a temporary sibling folder and
    swapped in whole, refusing to overwrite anything but a diffusers model; the caller's torch
    RNG state is left untouched.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown Flux variant {variant!r}; expected one of {VARIANTS}")
    return save_staged(out_dir, lambda scratch: build_flux_pipeline(variant, scratch), {"tokenizer": tok.PAD_EOS})


# ---- LoRAs --------------------------------------------------------------------------------------

#: Linear layers a Flux LoRA trains (ai-toolkit / diffusers' train_dreambooth_lora_flux targets).
_PEFT_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
    "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out",
)
#: BFL module names kohya's sd-scripts (networks/lora_flux.py) writes for one double block, with the
#: diffusers modules each stands for. The single block's linear1 (q, k, v and the MLP in one matrix)
#: is left out: diffusers splits it at FLUX.1's full-size widths only.
_KOHYA_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
}
LORA_STD = 0.2  # of both LoRA matrices: a weight-1 LoRA moves a 2-step tiny image visibly


def _linear_shapes(variant: str = "flux-dev") -> dict[str, tuple[int, int]]:
    """{module path: (out, in)} of the tiny transformer's Linear layers (built on the meta device)."""
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**TRANSFORMERS[variant])
    return {n: tuple(m.weight.shape) for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}  # type: ignore[misc]


def _pair(shape: tuple[int, int], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    out_f, in_f = shape
    return torch.randn(rank, in_f) * LORA_STD, torch.randn(out_f, rank) * LORA_STD


def make_tiny_flux_lora(path: str | Path, layout: str = "peft", seed: int | None = None, rank: int = 4) -> Path:
    """A LoRA for the tiny Flux dev/schnell transformer and its CLIP, written as real tools write them.

    ``layout="peft"``: diffusers' ``save_lora_weights`` layout (``transformer.<module>.lora_A.weight``,
    ``text_encoder.text_model.<module>.lora_B.weight``). ``layout="kohya"``: sd-scripts' Flux layout
    (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` with fused q/k/v, ``.alpha``,
    ``lora_unet_single_blocks_0_linear2``, ``lora_te1_text_model_...``) and kohya's training metadata.
    The caller's RNG is left alone.
    """
    from safetensors.torch import save_file

    from ...tiny.adapters import _te_targets

    if layout not in ("peft", "kohya"):
        raise ValueError(f"unknown LoRA layout {layout!r}; expected peft or kohya")
    shapes = _linear_shapes()
    state: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEEDS["lora"] if seed is None else seed)
        if layout == "peft":
            for name, shape in shapes.items():
                if name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and name.endswith(_PEFT_TARGETS):
                    if name.endswith("proj_out") and not name.startswith("single_"):
                        continue
                    down, up = _pair(shape, rank)
                    state[f"transformer.{name}.lora_A.weight"], state[f"transformer.{name}.lora_B.weight"] = down, up
            for name, shape in _te_targets("eos"):
                down, up = _pair(shape, rank)  # type: ignore[arg-type]
                state[f"text_encoder.{name}.lora_A.weight"], state[f"text_encoder.{name}.lora_B.weight"] = down, up
        else:
            def put(key: str, shape: tuple[int, int]) -> None:
                state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = _pair(shape, rank)
                state[f"{key}.alpha"] = torch.tensor(float(rank) / 2)

            for i in range(TRANSFORMERS["flux-dev"]["num_layers"]):
                for bfl, modules in _KOHYA_DOUBLE.items():
                    outs = [shapes[f"transformer_blocks.{i}.{m}"][0] for m in modules]
                    put(f"lora_unet_double_blocks_{i}_{bfl}", (sum(outs), shapes[f"transformer_blocks.{i}.{modules[0]}"][1]))
            for i in range(TRANSFORMERS["flux-dev"]["num_single_layers"]):
                put(f"lora_unet_single_blocks_{i}_linear2", shapes[f"single_transformer_blocks.{i}.proj_out"])
            for name, shape in _te_targets("eos"):
                put("lora_te1_" + name.replace(".", "_"), shape)  # type: ignore[arg-type]
            metadata = {"ss_base_model_version": "flux1", "ss_network_module": "networks.lora_flux", "ss_network_dim": str(rank)}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out), metadata=metadata or None)
    return out


# ---- ControlNets ---------------------------------------------------------------------------------

CONTROLNET_STD = 0.1  # of the residual projections, zero in a fresh ControlNet (see tiny.controlnet)


def build_flux_controlnet(variant: str = "flux-dev", seed: int | None = None) -> FluxControlNetModel:
    """A tiny FluxControlNetModel for the tiny ``variant`` transformer (InstantX layout: one double, one single block).

    Made as diffusers makes one for training (``from_transformer``), then its zero-initialised
    projections get seeded random weights so the control image moves the picture.
    """
    with tempfile.TemporaryDirectory() as scratch, torch.random.fork_rng(devices=[]):
        transformer = build_flux_pipeline(variant, scratch).transformer
        torch.manual_seed(SEEDS["controlnet"] if seed is None else seed)
        cfg = TRANSFORMERS[variant]
        net = FluxControlNetModel.from_transformer(
            transformer, num_layers=1, num_single_layers=1,
            attention_head_dim=cfg["attention_head_dim"], num_attention_heads=cfg["num_attention_heads"],
        )
        with torch.no_grad():
            for layer in (*net.controlnet_blocks, *net.controlnet_single_blocks, net.controlnet_x_embedder):
                layer.weight.normal_(0.0, CONTROLNET_STD)
                layer.bias.normal_(0.0, CONTROLNET_STD)
    return net.eval()


def make_tiny_flux_controlnet(path: str | Path, variant: str = "flux-dev", seed: int | None = None) -> Path:
    """Build a tiny Flux ControlNet and save it as a diffusers folder (config.json + safetensors)."""
    from ...tiny.controlnet import save_folder

    return save_folder(path, lambda: build_flux_controlnet(variant, seed))
