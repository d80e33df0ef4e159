"""Tiny, random-weight, real-architecture diffusers pipelines for tests and demos.

The classes are the real ones (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, ...)
so every code path of the worker runs as it would on SD 1.5 / SDXL, but the configs are
shrunk in the spirit of diffusers' own fast tests: a 2-step 64x64 generation takes ~0.2 s
on a CPU and a whole model folder is 8-11 MB. Nothing is downloaded.

Building is deterministic: each component is initialised under its own fixed seed, and
two builds give byte-identical folders.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from . import tokenizer as tok
from .arches import ARCHES, FAMILY_ARCHES, FLUX_ARCHES, MODEL_ARCHES  # noqa: F401  (the registry, without torch)

#: One fixed seed per component, so changing one component's config never changes the
#: weights of another.
SEEDS: dict[str, int] = {"unet": 0, "vae": 1, "text_encoder": 2, "text_encoder_2": 3}

TEXT_HIDDEN_SIZE = 32
TEXT_PROJECTION_DIM = 32
ADDITION_TIME_EMBED_DIM = 8
#: SDXL's micro-conditioning: original size (2) + crop top-left (2) + target size (2).
NUM_TIME_IDS = 6

# The schedulers are the ones the real checkpoints ship in scheduler/scheduler_config.json.
_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}
SD15_SCHEDULER: dict[str, Any] = {
    **_BETAS,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}
SDXL_SCHEDULER: dict[str, Any] = {
    **_BETAS,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "use_karras_sigmas": False,
}

_UNET_COMMON: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
}
SD15_UNET: dict[str, Any] = {**_UNET_COMMON, "cross_attention_dim": TEXT_HIDDEN_SIZE}
SDXL_UNET: dict[str, Any] = {
    **_UNET_COMMON,
    # SDXL conditions on both encoders' penultimate hidden states, concatenated.
    "cross_attention_dim": 2 * TEXT_HIDDEN_SIZE,
    "use_linear_projection": True,
    "transformer_layers_per_block": (1, 2),
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": ADDITION_TIME_EMBED_DIM,
    # time ids embedding + text_encoder_2's pooled projection
    "projection_class_embeddings_input_dim": NUM_TIME_IDS * ADDITION_TIME_EMBED_DIM
    + TEXT_PROJECTION_DIM,
}

_VAE_COMMON: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "sample_size": 128,  # 2 blocks -> vae_scale_factor 2: 64x64 image <-> 32x32 latents
}
# The real checkpoints' scaling factors, so latent statistics code sees familiar numbers.
SD15_VAE: dict[str, Any] = {**_VAE_COMMON, "scaling_factor": 0.18215}
SDXL_VAE: dict[str, Any] = {**_VAE_COMMON, "scaling_factor": 0.13025}


def _text_config(pad_token: str) -> CLIPTextConfig:
    """CLIP text config sized to the tiny vocab, with ids matching the tiny tokenizer."""
    return CLIPTextConfig(
        vocab_size=tok.vocab_size(),
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tok.MODEL_MAX_LENGTH,
        projection_dim=TEXT_PROJECTION_DIM,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=tok.token_id(tok.BOS_TOKEN),
        eos_token_id=tok.token_id(tok.EOS_TOKEN),
        pad_token_id=tok.token_id(pad_token),
    )


def _seeded(name: str) -> None:
    torch.manual_seed(SEEDS[name])


def _build_sd15(tok_dir: Path) -> StableDiffusionPipeline:
    _seeded("unet")
    unet = UNet2DConditionModel(**SD15_UNET)
    _seeded("vae")
    vae = AutoencoderKL(**SD15_VAE)
    _seeded("text_encoder")
    text_encoder = CLIPTextModel(_text_config(tok.PAD_EOS))
    tokenizer = tok.load_tokenizer(tok.write_tokenizer_files(tok_dir / "tokenizer", tok.PAD_EOS))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(tok_dir: Path) -> StableDiffusionXLPipeline:
    _seeded("unet")
    unet = UNet2DConditionModel(**SDXL_UNET)
    _seeded("vae")
    vae = AutoencoderKL(**SDXL_VAE)
    _seeded("text_encoder")
    text_encoder = CLIPTextModel(_text_config(tok.PAD_EOS))
    _seeded("text_encoder_2")
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tok.PAD_BANG))
    tokenizer = tok.load_tokenizer(tok.write_tokenizer_files(tok_dir / "tokenizer", tok.PAD_EOS))
    tokenizer_2 = tok.load_tokenizer(
        tok.write_tokenizer_files(tok_dir / "tokenizer_2", tok.PAD_BANG)
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
    )


_TOKENIZER_PADS: dict[str, dict[str, str]] = {
    "sd15": {"tokenizer": tok.PAD_EOS},
    "sdxl": {"tokenizer": tok.PAD_EOS, "tokenizer_2": tok.PAD_BANG},
}


def _is_diffusers_model(folder: Path) -> bool:
    index = folder / "model_index.json"
    if not index.is_file():
        return False
    try:
        return "_class_name" in json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _check_target(out: Path) -> None:
    """Only write into a missing/empty folder or over an existing diffusers model."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; refusing to overwrite it")
    if any(out.iterdir()) and not _is_diffusers_model(out):
        raise FileExistsError(
            f"{out} is not empty and is not a diffusers model folder (no model_index.json); "
            "refusing to write a tiny model into it"
        )


def build_pipeline(arch: str, scratch: str | Path) -> DiffusionPipeline:
    """Build the in-memory tiny pipeline; ``scratch`` receives the raw tokenizer files."""
    if arch == "sd15":
        return _build_sd15(Path(scratch))
    if arch == "sdxl":
        return _build_sdxl(Path(scratch))
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHES}")


def make_tiny_model(arch: str, out_dir: str | Path, single_file: bool = False) -> Path:
    """Build a tiny random-weight ``arch`` pipeline and save it (diffusers layout) to ``out_dir``.

    With ``single_file=True`` it writes one original-layout checkpoint instead:
    ``out_dir`` is then the file path (``.safetensors`` is appended when missing).

    The model is saved to a temporary sibling folder first and then swapped in, so an
    existing model folder is replaced whole (no stale files from another arch) and a
    failed build never leaves a half-written model behind. The caller's torch RNG state
    is left untouched.
    """
    if arch in FAMILY_ARCHES:
        if single_file:
            raise ValueError(f"{arch}: this tiny model is written as a diffusers folder only")
        import importlib

        module = importlib.import_module(f"sdworker.{FAMILY_ARCHES[arch]}")
        return module.make_tiny(arch, out_dir)
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {MODEL_ARCHES}")
    if single_file:
        # one original-layout (civitai-style) .safetensors file; same weights as the folder
        from .single_file import make_tiny_single_file

        return make_tiny_single_file(arch, out_dir)
    return save_staged(out_dir, lambda scratch: build_pipeline(arch, scratch), _TOKENIZER_PADS[arch])


def save_staged(out_dir: str | Path, build: Callable[[Path], Any], clip_tokenizers: dict[str, str] | None = None) -> Path:
    """Build a pipeline with `build(scratch)` and save it to `out_dir` as a diffusers folder.

    Every tiny family's writer goes through here: the build runs under a forked torch RNG (the
    caller's state is left untouched), the folder is staged in a temporary sibling and swapped
    in whole (no stale files from another arch, nothing half-written after a failure), and only
    a diffusers model is ever replaced. `clip_tokenizers` (subfolder -> pad token): the tiny CLIP
    tokenizer files to write back, since transformers 5 saves only tokenizer.json plus a config
    polluted with load kwargs, and the canonical files load in transformers 4 and 5 alike.
    """
    out = Path(out_dir).absolute()
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as tmp:
        tmp_path = Path(tmp)
        staged = tmp_path / "model"
        with torch.random.fork_rng(devices=[]):
            pipe = build(tmp_path / "tokenizers")
        pipe.save_pretrained(staged, safe_serialization=True)
        for sub, pad in (clip_tokenizers or {}).items():
            tok.write_tokenizer_files(staged / sub, pad)
        _check_target(out)  # re-check: something may have appeared meanwhile
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    return out
