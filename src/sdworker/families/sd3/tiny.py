"""Tiny, random-weight Stable Diffusion 3.5 pipelines (Large and Medium layouts) for tests and demos.

The real classes at tiny sizes, each component seeded on its own, nothing downloaded:
SD3Transformer2DModel (MMDiT; Medium's MMDiT-X adds dual-attention layers), a 16-channel
AutoencoderKL with SD3's scaling and shift factors, two CLIPTextModelWithProjection (CLIP-L and
CLIP-G: their pooled projections are concatenated into the transformer's pooled input, their
hidden states into the first half of the joint sequence) and a T5EncoderModel (the second half).

What tells Large from Medium is what tells the real checkpoints apart: Medium's transformer has
``dual_attention_layers`` (and QK norm). Both ship FlowMatchEulerDiscreteScheduler with shift 3.0.

Sizes: two VAE blocks (scale factor 2) and SD3's 2x2 patches, so a 64x64 image is 32x32 latents,
256 tokens. T5 is 64 wide: SD3 pads the concatenated CLIP states (2 x 32) up to T5's width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

from ...tiny import tokenizer as tok
from ...tiny.builder import TEXT_HIDDEN_SIZE, TEXT_PROJECTION_DIM, _text_config, save_staged
from ..flux.tiny import FLUX_VAE, t5_shape, t5_tokenizer

#: make_tiny_model's arch names -> variant ("sd3" is SD 3.5 Large).
ARCHES: dict[str, str] = {"sd3": "large", "sd35-large": "large", "sd35-medium": "medium"}
VARIANTS: tuple[str, ...] = ("large", "medium")

#: One seed per component (distinct from the other families' builders).
SEEDS: dict[str, int] = {"transformer": 30, "vae": 31, "text_encoder": 32, "text_encoder_2": 33, "text_encoder_3": 34, "lora": 35}

LATENT_CHANNELS = 16
T5_D_MODEL = 2 * TEXT_HIDDEN_SIZE  # at least the two CLIP widths together, as 4096 >= 768 + 1280

# SD 3.5's vae/config.json, shrunk to FLUX.1's two tiny blocks (the same 16-channel layout).
SD3_VAE: dict[str, Any] = {**FLUX_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}

_TRANSFORMER: dict[str, Any] = {
    "sample_size": 32,  # latent side of the default image: 64 px with the tiny VAE
    "patch_size": 2,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "num_layers": 3,  # First Block Cache needs a head, a tail and SD 3.5's text-less last block
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_D_MODEL,
    "caption_projection_dim": 32,  # heads x head dim, as 1536 = 24 x 64 in Medium
    "pooled_projection_dim": 2 * TEXT_PROJECTION_DIM,  # CLIP-L + CLIP-G pooled projections
    "pos_embed_max_size": 64,
}
TRANSFORMERS: dict[str, dict[str, Any]] = {
    "large": {**_TRANSFORMER, "qk_norm": "rms_norm"},
    "medium": {**_TRANSFORMER, "qk_norm": "rms_norm", "dual_attention_layers": (0,)},
}
#: stabilityai/stable-diffusion-3.5-*/scheduler/scheduler_config.json
SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}


def _seeded(name: str) -> None:
    torch.manual_seed(SEEDS[name])


def build_sd3_pipeline(variant: str, scratch: str | Path) -> StableDiffusion3Pipeline:
    """The in-memory tiny SD 3.5 pipeline of ``variant``; ``scratch`` receives the CLIP tokenizer files."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SD3 variant {variant!r}; expected one of {VARIANTS}")
    _seeded("transformer")
    transformer = SD3Transformer2DModel(**TRANSFORMERS[variant])
    _seeded("vae")
    vae = AutoencoderKL(**SD3_VAE)
    _seeded("text_encoder")
    text_encoder = CLIPTextModelWithProjection(_text_config(tok.PAD_EOS))
    _seeded("text_encoder_2")
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tok.PAD_BANG))
    _seeded("text_encoder_3")
    text_encoder_3 = T5EncoderModel(T5Config(**t5_shape(T5_D_MODEL)))
    scratch = Path(scratch)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok.load_tokenizer(tok.write_tokenizer_files(scratch / "tokenizer", tok.PAD_EOS)),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tok.load_tokenizer(tok.write_tokenizer_files(scratch / "tokenizer_2", tok.PAD_BANG)),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer(),
    )


def make_tiny(arch: str, out_dir: str | Path) -> Path:
    """make_tiny_model's entry for the SD 3.5 arches ("sd3" = Large)."""
    if arch not in ARCHES:
        raise ValueError(f"unknown SD3 arch {arch!r}; expected one of {tuple(ARCHES)}")
    return save_staged(
        out_dir, lambda scratch: build_sd3_pipeline(ARCHES[arch], scratch), {"tokenizer": tok.PAD_EOS, "tokenizer_2": tok.PAD_BANG}
    )


def lora_targets(variant: str = "large") -> dict[str, tuple[int, int]]:
    """(out, in) of the transformer's attention projections a LoRA adapts, by diffusers module name."""
    transformer = SD3Transformer2DModel(**TRANSFORMERS[variant])
    out: dict[str, tuple[int, int]] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in ("to_q", "to_k", "to_v", "to_out.0", "0") and ".attn." in f".{name}":
            out[name] = (module.out_features, module.in_features)
    return out


def make_tiny_sd3_lora(path: str | Path, variant: str = "large", rank: int = 4, seed: int | None = None) -> Path:
    """A diffusers/PEFT-layout SD3 LoRA (``transformer.<module>.lora_A/B.weight``) for the tiny transformer."""
    from safetensors.torch import save_file

    gen = torch.Generator("cpu").manual_seed(SEEDS["lora"] if seed is None else seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, (rows, cols) in sorted(lora_targets(variant).items()):
        tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, cols, generator=gen) * 0.5
        tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(rows, rank, generator=gen) * 0.5
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target))
    return target
