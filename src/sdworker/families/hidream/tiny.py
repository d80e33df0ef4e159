"""Tiny, random-weight HiDream-I1 pipelines (Full, Dev and Fast layouts) for tests and demos.

The real classes at tiny sizes, each component seeded on its own, nothing downloaded:
HiDreamImageTransformer2DModel (double- and single-stream blocks with their mixture-of-experts
feed-forwards), a 16-channel AutoencoderKL (FLUX.1's VAE layout), two CLIPTextModelWithProjection
(HiDream's Long-CLIP pair: 248 positions, pooled projections concatenated), T5EncoderModel and
LlamaForCausalLM (read through all its hidden states, ``llama_layers`` picks one per block).

What tells the variants apart is what tells the real checkpoints apart: the scheduler. Full ships
UniPCMultistepScheduler on flow sigmas with flow_shift 3.0 (and is run with real CFG); Dev ships
FlowMatchEulerDiscreteScheduler with shift 6.0, Fast the same with shift 3.0 (both
guidance-distilled). The transformer is the same layout in all three.

Sizes: HiDreamImagePipeline rescales every request to the area of (128 x vae_scale_factor)^2
(its ``default_sample_size`` is fixed at 128), so the smallest image a HiDream pipeline makes is
128x128: the VAE here has one block (scale factor 1), and a 128x128 image is 128x128 latents,
4096 tokens of 2x2 patches, as for the real model at 1024x1024.

Tokenizers are made in-process: the tiny CLIP BPE (tiny.tokenizer) twice, T5 as in families.flux.tiny,
and Llama as a WordLevel ``PreTrainedTokenizerFast`` over the same prompt words with a
``<|begin_of_text|>`` prefix, as Llama 3's tokenizer adds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
    UniPCMultistepScheduler,
)
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5EncoderModel

from ...tiny import tokenizer as tok
from ...tiny.builder import TEXT_PROJECTION_DIM, _text_config, save_staged
from ..flux.tiny import FLUX_VAE, T5_D_MODEL, t5_config, t5_tokenizer

#: make_tiny_model's arch names -> variant ("hidream" is the Full model, the presets' quality).
ARCHES: dict[str, str] = {"hidream": "full", "hidream-full": "full", "hidream-dev": "dev", "hidream-fast": "fast"}
VARIANTS: tuple[str, ...] = ("full", "dev", "fast")

#: One seed per component (distinct from the SD and Flux builders' seeds).
SEEDS: dict[str, int] = {
    "transformer": 20, "vae": 21, "text_encoder": 22, "text_encoder_2": 23, "text_encoder_3": 24, "text_encoder_4": 25,
}

LATENT_CHANNELS = 16
#: Long-CLIP's position table (HiDream tokenizes CLIP prompts up to 218 tokens, not 77).
CLIP_POSITIONS = 248
LLAMA_HIDDEN = 48
LLAMA_LAYERS = 2

# FLUX.1's VAE (HiDream ships the same one), one block: vae_scale_factor 1.
HIDREAM_VAE: dict[str, Any] = {
    **FLUX_VAE,
    "block_out_channels": (32,),
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
}

# HiDream-I1's transformer/config.json, shrunk: one double- and one single-stream block, each
# reading one Llama layer (llama_layers), the T5 states through the last caption projection.
TRANSFORMER: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "caption_channels": [T5_D_MODEL, LLAMA_HIDDEN],  # [T5, Llama], as the real [4096, 4096]
    "text_emb_dim": 2 * TEXT_PROJECTION_DIM,  # the two CLIP pooled projections, concatenated
    "num_routed_experts": 4,
    "num_activated_experts": 2,
    "axes_dims_rope": (8, 4, 4),  # sums to attention_head_dim
    "max_resolution": (128, 128),  # the real value: non-square latents pad to 128x128 / 2x2 tokens
    "llama_layers": list(range(LLAMA_LAYERS)),
}

# The real checkpoints' scheduler/scheduler_config.json.
SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "full": (
        UniPCMultistepScheduler,
        {
            "num_train_timesteps": 1000,
            "prediction_type": "flow_prediction",
            "use_flow_sigmas": True,
            "flow_shift": 3.0,
            "solver_order": 2,
            "solver_type": "bh2",
            "predict_x0": True,
            "lower_order_final": True,
            "final_sigmas_type": "zero",
        },
    ),
    "dev": (FlowMatchEulerDiscreteScheduler, {"num_train_timesteps": 1000, "shift": 6.0, "use_dynamic_shifting": False}),
    "fast": (FlowMatchEulerDiscreteScheduler, {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}),
}

# ---- the Llama tokenizer: WordLevel over the prompt words ------------------------------------------

LLAMA_BOS, LLAMA_EOS, LLAMA_UNK = "<|begin_of_text|>", "<|end_of_text|>", "<unk>"
_SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789,.!?:;'()[]-_/"
#: Llama 3.1's model_max_length; the pipeline asks for max_sequence_length tokens (128 by default).
LLAMA_MAX_LENGTH = 131072


def llama_vocab() -> dict[str, int]:
    """Specials first, then every prompt word of the tiny CLIP corpus, then single symbols."""
    pieces = [LLAMA_BOS, LLAMA_EOS, LLAMA_UNK, *sorted(set(tok._CORPUS))]
    pieces += [ch for ch in _SYMBOLS if ch not in pieces]
    return {piece: i for i, piece in enumerate(pieces)}


def llama_tokenizer() -> PreTrainedTokenizerFast:
    vocab = llama_vocab()
    backend = Tokenizer(WordLevel(vocab, unk_token=LLAMA_UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA_BOS} $A", pair=f"{LLAMA_BOS} $A {LLAMA_BOS} $B", special_tokens=[(LLAMA_BOS, vocab[LLAMA_BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=LLAMA_BOS, eos_token=LLAMA_EOS, unk_token=LLAMA_UNK, model_max_length=LLAMA_MAX_LENGTH
    )


def llama_config() -> LlamaConfig:
    vocab = llama_vocab()
    return LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=LLAMA_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LLAMA_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=vocab[LLAMA_BOS],
        eos_token_id=vocab[LLAMA_EOS],
        pad_token_id=vocab[LLAMA_EOS],  # the pipeline pads with eos
        tie_word_embeddings=False,
    )


def _clip(pad_token: str) -> CLIPTextModelWithProjection:
    config = _text_config(pad_token)
    config.max_position_embeddings = CLIP_POSITIONS
    return CLIPTextModelWithProjection(config)


# ---- the pipeline ---------------------------------------------------------------------------------


def _seeded(name: str) -> None:
    torch.manual_seed(SEEDS[name])


def build_hidream_pipeline(variant: str, scratch: str | Path) -> HiDreamImagePipeline:
    """The in-memory tiny HiDream pipeline of ``variant``; ``scratch`` receives the CLIP tokenizer files."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown HiDream variant {variant!r}; expected one of {VARIANTS}")
    _seeded("transformer")
    transformer = HiDreamImageTransformer2DModel(**TRANSFORMER)
    _seeded("vae")
    vae = AutoencoderKL(**HIDREAM_VAE)
    _seeded("text_encoder")
    text_encoder = _clip(tok.PAD_EOS)
    _seeded("text_encoder_2")
    text_encoder_2 = _clip(tok.PAD_BANG)
    _seeded("text_encoder_3")
    text_encoder_3 = T5EncoderModel(t5_config())
    _seeded("text_encoder_4")
    text_encoder_4 = LlamaForCausalLM(llama_config())
    scratch = Path(scratch)
    sched_cls, sched_cfg = SCHEDULERS[variant]
    return HiDreamImagePipeline(
        scheduler=sched_cls(**sched_cfg),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok.load_tokenizer(tok.write_tokenizer_files(scratch / "tokenizer", tok.PAD_EOS)),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tok.load_tokenizer(tok.write_tokenizer_files(scratch / "tokenizer_2", tok.PAD_BANG)),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer(),
        text_encoder_4=text_encoder_4,
        tokenizer_4=llama_tokenizer(),
        transformer=transformer,
    )


def make_tiny(arch: str, out_dir: str | Path) -> Path:
    """make_tiny_model's entry for the HiDream arches ("hidream" = Full)."""
    if arch not in ARCHES:
        raise ValueError(f"unknown HiDream arch {arch!r}; expected one of {tuple(ARCHES)}")
    return make_tiny_hidream(ARCHES[arch], out_dir)


def make_tiny_hidream(variant: str, out_dir: str | Path) -> Path:
    """Build and save the tiny ``variant`` HiDream pipeline to ``out_dir`` (diffusers layout).

    As families.flux.tiny.make_tiny_flux: staged in a temporary sibling folder and swapped in whole,
    refusing to overwrite anything but a diffusers model; the caller's torch RNG state is left
    untouched; two builds give byte-identical folders.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown HiDream variant {variant!r}; expected one of {VARIANTS}")
    return save_staged(
        out_dir, lambda scratch: build_hidream_pipeline(variant, scratch), {"tokenizer": tok.PAD_EOS, "tokenizer_2": tok.PAD_BANG}
    )
