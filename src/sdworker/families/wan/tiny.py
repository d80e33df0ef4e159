"""Tiny, random-weight Wan 2.1 / 2.2 video pipelines for tests and demos.

The real classes (WanTransformer3DModel, AutoencoderKLWan, UMT5EncoderModel, a UniPC scheduler in
flow-prediction mode, WanPipeline / WanImageToVideoPipeline) at tiny sizes, each component seeded
on its own, nothing downloaded. What tells the variants apart is what tells the real checkpoints
apart:

* ``wan21``: Wan2.1-T2V layout, one transformer.
* ``wan22``: Wan2.2-T2V-A14B layout, two experts (``transformer`` for high noise, ``transformer_2``
  for low noise) and ``boundary_ratio`` in model_index.json.
* ``wan22-i2v``: Wan2.2-I2V-A14B layout: WanImageToVideoPipeline, two experts whose input is the
  noise plus the image condition (16 + 4 mask + 16 channels), no image encoder.
* ``wan21-i2v``: Wan2.1-I2V layout: one transformer taking a CLIP vision encoder's hidden states
  (``image_dim``), with its CLIPImageProcessor.
* ``wan22-ti2v``: Wan2.2-TI2V-5B layout: WanPipeline with ``expand_timesteps`` (a timestep per
  token, so the first frame can stay clean for image-to-video) and the Wan 2.2 VAE (48 latent
  channels, 2x2 pixel patches before the encoder: 16x spatially), one transformer for both modes.

Sizes: the VAE keeps Wan's factors (8x spatially, 4x in time) and the transformer Wan's 1x2x2
patches, so width and height must be multiples of 16 and num_frames of the form 4k+1, as on the
real models; a 64x64, 9-frame video is 3x8x8 latents, 48 tokens. The UMT5 tokenizer is the Unigram
vocabulary of :mod:`sdworker.families.flux.tiny` (no sentencepiece model, no download), as T5TokenizerFast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from ...tiny.builder import save_staged
from ..flux.tiny import t5_shape, t5_tokenizer

VARIANTS: tuple[str, ...] = ("wan21", "wan22", "wan22-i2v", "wan21-i2v", "wan22-ti2v")

#: One seed per component (distinct from the other tiny builders' seeds).
SEEDS: dict[str, int] = {"transformer": 20, "transformer_2": 21, "vae": 22, "text_encoder": 23, "image_encoder": 24}

TEXT_DIM = 32
LATENT_CHANNELS = 16
#: Wan2.2-A14B's switch from the high-noise to the low-noise expert (t2v 0.875, i2v 0.9).
BOUNDARY_RATIO = {"wan22": 0.875, "wan22-i2v": 0.9}
CLIP_VISION_HIDDEN = 32

# Wan's VAE at 8 channels: four levels keep the real 8x spatial / 4x temporal factors.
WAN_VAE: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": LATENT_CHANNELS,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}

# Wan2.2-TI2V-5B's VAE (is_residual, 2x2 pixel patches -> 12 input channels, 48 latent channels), shrunk.
WAN22_VAE: dict[str, Any] = {
    "base_dim": 8,
    "decoder_base_dim": 8,
    "z_dim": 48,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "latents_mean": [0.0] * 48,
    "latents_std": [1.0] * 48,
}

_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,  # rope splits it into 4 (time) + 4 + 4 (height, width)
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "text_dim": TEXT_DIM,
    "freq_dim": 32,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}
#: image-to-video: noise + 4 mask channels + the encoded first frame
_I2V = {**_TRANSFORMER, "in_channels": 2 * LATENT_CHANNELS + 4}
TRANSFORMERS: dict[str, dict[str, Any]] = {
    "wan21": _TRANSFORMER,
    "wan22": _TRANSFORMER,
    "wan22-i2v": _I2V,
    "wan21-i2v": {**_I2V, "image_dim": CLIP_VISION_HIDDEN, "added_kv_proj_dim": 2 * 12},
    "wan22-ti2v": {**_TRANSFORMER, "in_channels": 48, "out_channels": 48},
}

# The real checkpoints' scheduler/scheduler_config.json (Wan2.1-T2V-1.3B-Diffusers: UniPC, flow shift 3).
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "solver_order": 2,
}


def umt5_config() -> UMT5Config:
    """UMT5 like Wan's google/umt5-xxl, at d_model TEXT_DIM (the tiny T5 shape of families.flux.tiny)."""
    return UMT5Config(**t5_shape(TEXT_DIM))


def _seeded(name: str) -> None:
    torch.manual_seed(SEEDS[name])


def _clip_vision() -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    """Wan 2.1 I2V's image encoder (open-clip ViT-H in the real model) at hidden size 32, 32px input."""
    _seeded("image_encoder")
    config = CLIPVisionConfig(
        hidden_size=CLIP_VISION_HIDDEN, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=CLIP_VISION_HIDDEN,
    )
    processor = CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32})
    return CLIPVisionModel(config), processor


def build_wan_pipeline(variant: str) -> WanPipeline | WanImageToVideoPipeline:
    """The in-memory tiny Wan pipeline of ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Wan variant {variant!r}; expected one of {VARIANTS}")
    _seeded("transformer")
    transformer = WanTransformer3DModel(**TRANSFORMERS[variant])
    transformer_2 = None
    if variant in BOUNDARY_RATIO:
        _seeded("transformer_2")
        transformer_2 = WanTransformer3DModel(**TRANSFORMERS[variant])
    _seeded("vae")
    vae = AutoencoderKLWan(**(WAN22_VAE if variant == "wan22-ti2v" else WAN_VAE))
    _seeded("text_encoder")
    text_encoder = UMT5EncoderModel(umt5_config())
    common: dict[str, Any] = {
        "tokenizer": t5_tokenizer(),
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": UniPCMultistepScheduler(**SCHEDULER),
        "transformer": transformer,
        "transformer_2": transformer_2,
        "boundary_ratio": BOUNDARY_RATIO.get(variant),
    }
    if variant == "wan22-ti2v":
        return WanPipeline(**common, expand_timesteps=True)
    if variant == "wan21-i2v":
        image_encoder, image_processor = _clip_vision()
        return WanImageToVideoPipeline(**common, image_encoder=image_encoder, image_processor=image_processor)
    if variant.endswith("i2v"):
        return WanImageToVideoPipeline(**common)
    return WanPipeline(**common)


def make_tiny(arch: str, out_dir: str | Path) -> Path:
    """make_tiny_model's entry for the Wan arches."""
    return make_tiny_wan(arch, out_dir)


def make_tiny_wan(variant: str, out_dir: str | Path) -> Path:
    """Build and save the tiny ``variant`` Wan pipeline to ``out_dir`` (diffusers layout).

    Like :func:`sdworker.families.flux.tiny.make_tiny_flux`: staged in a temporary sibling folder and swapped
    in whole, refusing to overwrite anything but a diffusers model; the caller's torch RNG state is
    left untouched, and two builds give the same bytes.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown Wan variant {variant!r}; expected one of {VARIANTS}")
    return save_staged(out_dir, lambda _scratch: build_wan_pipeline(variant))
