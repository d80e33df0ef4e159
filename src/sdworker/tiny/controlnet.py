"""Tiny, random-weight ControlNets that fit the tiny SD 1.5 / SDXL UNets (tests and demos).

`ControlNetModel.from_unet` copies the tiny UNet's encoder half, so the config fits that arch
exactly. A fresh ControlNet has zero-initialised output convolutions (its residuals are zero
until trained), which would make every test of "the control image changes the picture"
vacuous; they get seeded random weights instead, large enough to move the tiny model's output.

The conditioning embedding downsamples by the VAE scale factor: the tiny VAEs have two blocks
(factor 2), so the embedding has two channel stages (one stride-2 step), not SD's four.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel

from .builder import ARCHES, build_pipeline

#: Seeds of the tiny ControlNets' own weights (the UNet part is copied from the tiny UNet).
SEEDS: dict[str, int] = {"sd15": 10, "sdxl": 11}
#: conditioning embedding channels: one stride-2 stage, matching the tiny VAE's factor 2.
CONDITIONING_CHANNELS = (16, 32)
#: std of the random "zero convs" (residual outputs), and of the hint embedding's last conv:
#: the control image then moves a 2-step 64x64 image by a few levels per pixel, far from overflow.
ZERO_CONV_STD = 0.1
HINT_STD = 1.0


def build_controlnet(arch: str, seed: int | None = None) -> ControlNetModel:
    """The in-memory tiny ControlNet of `arch`; `seed` varies its random parts (default SEEDS)."""
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHES}")
    with tempfile.TemporaryDirectory() as scratch, torch.random.fork_rng(devices=[]):
        unet = build_pipeline(arch, scratch).unet
        torch.manual_seed(SEEDS[arch] if seed is None else seed)
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)
        convs = [(conv, ZERO_CONV_STD) for conv in (*cn.controlnet_down_blocks, cn.controlnet_mid_block)]
        convs.append((cn.controlnet_cond_embedding.conv_out, HINT_STD))
        with torch.no_grad():
            for conv, std in convs:
                conv.weight.normal_(0.0, std)
                conv.bias.normal_(0.0, ZERO_CONV_STD)
    return cn.eval()


def make_tiny_controlnet(arch: str, path: str | Path, seed: int | None = None) -> Path:
    """Build a tiny `arch` ControlNet and save it as a diffusers folder (config.json + safetensors).

    Written to a temporary sibling first and swapped in, so a failed build leaves nothing behind.
    The caller's torch RNG state is left untouched.
    """
    return save_folder(path, lambda: build_controlnet(arch, seed))


def save_folder(path: str | Path, build: Callable[[], Any]) -> Path:
    """Save the model `build()` makes as a diffusers folder at `path`, refusing to replace anything but one.

    The target is checked before building (building is the slow part); the folder is staged in a
    temporary sibling and swapped in whole.
    """
    out = Path(path).absolute()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise FileExistsError(f"{out} exists and is not a model folder; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    cn = build()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as tmp:
        staged = Path(tmp) / "controlnet"
        cn.save_pretrained(staged, safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    return out
