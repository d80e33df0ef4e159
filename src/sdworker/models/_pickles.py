"""Pickled models (.ckpt/.pt/.pth/.bin) are never unpickled: kind and base come from names only."""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import _hints
from ._types import Detection

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

_FOLDER_KINDS = (
    (("lora", "loras", "lycoris", "locon"), "lora"),
    (("vae", "vae-approx"), "vae"),
    (("embeddings", "embedding", "textual_inversion"), "embedding"),
    (("controlnet", "control", "t2i_adapter"), "controlnet"),
    (("esrgan", "realesrgan", "upscale_models", "upscalers", "swinir", "ldsr", "dat", "hat"), "upscaler"),
    (("unet", "diffusion_models", "transformer"), "unet"),
    (("clip", "text_encoders", "text_encoder", "text_encoder_2", "t5"), "text_encoder"),
)
_CHECKPOINT_FOLDERS = ("stable-diffusion", "stable_diffusion", "checkpoints", "ckpt")
_NAME_KINDS = (
    (re.compile(r"lora|lycoris|locon|loha"), "lora"),
    (re.compile(r"control|t2iadapter"), "controlnet"),
    (re.compile(r"esrgan|swinir|upscal|(?<![a-z])x[248](?![a-z0-9])|(?<![a-z0-9])[248]x(?![a-z0-9])"), "upscaler"),
    (re.compile(r"(?<![a-z])vae|vae(?![a-z])"), "vae"),
    (re.compile(r"learned_embeds|(?<![a-z])embedding|textual.?inversion"), "embedding"),
)


def _pickle_kind(p: Path) -> tuple[str, str]:
    """(kind, evidence): the nearest model-type folder wins; in a checkpoint folder or none, the name."""
    name = p.name.lower()
    by_name = next((k for pattern, k in _NAME_KINDS if pattern.search(name)), None)
    for folder in [part.lower() for part in p.parent.parts[-3:]][::-1]:  # nearest first
        kind = next((k for names, k in _FOLDER_KINDS if folder in names), None)
        if kind:
            return kind, "folder"
        if folder in _CHECKPOINT_FOLDERS:
            return (by_name, "name") if by_name else ("checkpoint", "folder")
    return (by_name, "name") if by_name else ("unknown", "none")


def guess_from_path(path: str | os.PathLike[str]) -> Detection:
    """Kind/base of a pickle (.ckpt/.pt/.pth/.bin) from its file and folder names only.

    Pickles can run code when loaded, so they are never opened here; the guess is what the
    user's folder layout (A1111 / ComfyUI model folders) and the file name say.
    """
    p = Path(path)
    kind, evidence = _pickle_kind(p)
    base = "unknown" if kind == "upscaler" else (_hints.base_from_text(p.name) or "unknown")
    return Detection(kind, base, "ckpt", {"pickle": True, "evidence": evidence, "base_from": "name"})
