"""Base-model hints from free text (file names, titles) and from training metadata.

Tensor shapes are the authority; these only fill gaps shapes cannot close (a VAE, a pickle,
Pony vs. plain SDXL, Flux dev vs. schnell for a LoRA) and are kept deliberately narrow.
"""

from __future__ import annotations

import re
from typing import Mapping

_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), base)
    for pattern, base in (
        (r"pony", "pony"),
        (r"(?<![a-z])hi[\s_.-]?dream", "hidream"),
        (r"flux.*schnell|schnell.*flux", "flux_schnell"),
        (r"flux.*krea|krea.*flux", "flux_krea"),
        (r"flux.*dev|dev.*flux", "flux_dev"),
        (r"flux", "flux"),
        (r"sd[\s_.-]?3|stable[\s_.-]?diffusion[\s_.-]?3", "sd3"),
        (r"(sdxl|(?<![a-z])xl(?![a-z])|xl(?=v?\d|[\s_.-]|$)).*refiner|refiner.*(sdxl|xl)", "sdxl_refiner"),
        (r"sdxl|(?<![a-z])xl(?![a-z])|xl(?=v?\d|[\s_.-]|$)", "sdxl"),
        (r"sd[\s_.-]?v?2(?:[\s_.-]?[01])?(?!\d)", "sd_2"),
        (r"sd[\s_.-]?v?1[\s_.-]?5|v1-5|sd[\s_.-]?v1(?!\d)", "sd_1_5"),
    )
)

# modelspec.architecture prefixes (Stability's ModelSpec, written by kohya sd-scripts, ComfyUI, ...)
_ARCH_PREFIXES: tuple[tuple[str, str], ...] = (
    ("stable-diffusion-xl-v1-refiner", "sdxl_refiner"),
    ("stable-diffusion-xl", "sdxl"),
    ("stable-diffusion-v2", "sd_2"),
    ("stable-diffusion-v1", "sd_1_5"),
    ("stable-diffusion-3", "sd3"),
    ("flux-1-dev", "flux_dev"),
    ("flux-1-schnell", "flux_schnell"),
    ("flux-1", "flux"),
)

#: Metadata keys that name the model a LoRA/fine-tune was trained on (not the file's own title).
TRAINING_BASE_KEYS = ("ss_base_model_version", "ss_sd_model_name", "modelspec.architecture")
#: Keys that describe the file itself; only trusted for checkpoints (a LoRA titled "pony" may be
#: a My Little Pony character LoRA for plain SDXL).
TITLE_KEYS = ("modelspec.title", "ss_output_name")


def base_from_text(text: str | None) -> str | None:
    """First base-model id a file name or title names, or None."""
    if not text:
        return None
    lowered = text.lower()
    for pattern, base in _TEXT_RULES:
        if pattern.search(lowered):
            return base
    return None


def base_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """Base model declared by ModelSpec / kohya training metadata, or None."""
    arch = str(metadata.get("modelspec.architecture", "")).lower()
    for prefix, base in _ARCH_PREFIXES:
        if arch.startswith(prefix):
            return base
    version = str(metadata.get("ss_base_model_version", "")).lower()
    if version:
        if version.startswith("sdxl"):
            return "sdxl_refiner" if "refiner" in version else "sdxl"
        if version.startswith(("sd_v2", "sd_2", "sd2", "v2")):
            return "sd_2"
        if version.startswith(("sd_v1", "sd_1", "sd1", "v1")):
            return "sd_1_5"
        if version.startswith("sd3"):
            return "sd3"
        if version.startswith("flux"):
            return "flux"
    if str(metadata.get("ss_v2", "")).lower() == "true":
        return "sd_2"
    return None


def kind_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """ModelSpec's adapter suffix (``.../lora``, ``.../textual-inversion``) as a kind."""
    arch = str(metadata.get("modelspec.architecture", "")).lower()
    if arch.endswith("/lora") or arch.endswith("/lycoris"):
        return "lora"
    if arch.endswith("/textual-inversion"):
        return "embedding"
    if "ss_network_module" in metadata:
        return "lora"
    return None


def says_pony(metadata: Mapping[str, str], name: str | None, trust_title: bool) -> bool:
    """Whether metadata (and, for checkpoints, the title or file name) says Pony Diffusion."""
    keys = TRAINING_BASE_KEYS + (TITLE_KEYS if trust_title else ())
    texts = [str(metadata.get(k, "")) for k in keys]
    if trust_title and name:
        texts.append(name)
    return any("pony" in t.lower() for t in texts)
