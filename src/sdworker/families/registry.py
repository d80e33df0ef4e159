"""base_model (contract section 7) -> the family that generates with it."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Mapping

from ..models._types import BASE_MODELS
from .base import Family
from .flux import FluxFamily
from .hidream import HiDreamFamily
from .sd import SDFamily
from .sd3 import SD3Family
from .wan import WanFamily

FAMILIES: tuple[Family, ...] = (SDFamily(), FluxFamily(), WanFamily(), HiDreamFamily(), SD3Family())

_BY_BASE: dict[str, Family] = {}
for _family in FAMILIES:
    for _base in _family.base_models:
        if _base not in BASE_MODELS:  # the one vocabulary of base models (contract section 7)
            raise RuntimeError(f"family {_family.name} claims base model {_base!r}, which models._types.BASE_MODELS lacks")
        if _base in _BY_BASE:  # one family per base model, never a silent override
            raise RuntimeError(f"base model {_base!r} is claimed by families {_BY_BASE[_base].name} and {_family.name}")
        _BY_BASE[_base] = _family


def for_base_model(base_model: str) -> Family | None:
    """The family of `base_model`; None when no family generates with it (sd3, unknown, ...)."""
    return _BY_BASE.get(base_model)


def supported_base_models() -> tuple[str, ...]:
    """Every base model some family generates with, in registry order."""
    return tuple(_BY_BASE)


_BY_PIPELINE: dict[str, Family] = {cls: fam for fam in FAMILIES for cls in fam.model_index_classes}


def folder_base_model(folder: Path, index: dict[str, Any]) -> str:
    """The base model of a diffusers folder, told by the family its model_index.json class names;
    "unknown" when no family runs that class."""
    family = _BY_PIPELINE.get(str(index.get("_class_name", "")))
    return family.folder_base_model(folder, index) if family is not None else "unknown"


def tiny_arches() -> dict[str, str]:
    """make_tiny_model's family arches: arch -> the module (under sdworker) that builds it."""
    return {arch: module for fam in FAMILIES for arch, module in fam.tiny_arches.items()}


# ---- what the generic code asks (models/ detection, managers' LoRAs, ControlNets and previews) ----

#: Stable Diffusion: reads the folders and latents no other family claims.
DEFAULT: Family = FAMILIES[0]


@functools.cache
def text_hints() -> tuple[tuple[re.Pattern[str], str], ...]:
    """Every family's name rules, by rank (ties in registry order)."""
    rules = sorted((rank, i, pattern, base) for i, (rank, pattern, base) in enumerate(r for f in FAMILIES for r in f.text_hints))
    return tuple((re.compile(pattern), base) for _, _, pattern, base in rules)


def arch_prefixes() -> tuple[tuple[str, str], ...]:
    return tuple(p for fam in FAMILIES for p in fam.arch_prefixes)


def base_from_version(version: str) -> str | None:
    """The base model a kohya ss_base_model_version (lowered) names, or None."""
    return next((b for fam in FAMILIES if (b := fam.base_from_version(version)) is not None), None)


def detect_folder(folder: Path, index: dict[str, Any], unet: dict[str, Any]) -> str:
    """Detection's base model of a diffusers pipeline folder: asked of the family whose class prefix
    matches longest, else (or when it passes) of the default family."""
    cls = str(index.get("_class_name", ""))
    claims = [(len(p), fam) for fam in FAMILIES for p in fam.folder_class_prefixes if cls.startswith(p)]
    base = max(claims, key=lambda c: c[0])[1].detect_folder(folder, index, unet) if claims else None
    return base if base is not None else DEFAULT.detect_folder(folder, index, unet) or "unknown"


def detect_component(cls: str, cfg: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, base model) of a lone component folder a family knows by its class; None otherwise."""
    return next((found for fam in FAMILIES if (found := fam.detect_component(cls, cfg)) is not None), None)


def _default_last() -> tuple[Family, ...]:
    return tuple(f for f in FAMILIES if f is not DEFAULT) + (DEFAULT,)


def detect_denoiser(unet: Mapping[str, tuple[int, ...]], whole: Mapping[str, tuple[int, ...]]) -> tuple[str, dict[str, Any]] | None:
    """(base model, details) of a single file's denoiser, from the first family that knows its
    tensor names (the default family last); None when none does."""
    return next((found for fam in _default_last() if (found := fam.detect_denoiser(unet, whole)) is not None), None)


def detect_controlnet(body: Mapping[str, tuple[int, ...]], details: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(base model, details) of a single-file ControlNet; the default family reads what no other claims."""
    for fam in _default_last():
        found = fam.detect_controlnet(body, details)
        if found is not None:
            return found
    return "unknown", details


def vae_scaling() -> dict[float, str]:
    return {s: b for fam in FAMILIES for s, b in fam.vae_scaling.items()}


def refine_base(kind: str, base: str, metadata: Mapping[str, str], name: str | None) -> str:
    family = for_base_model(base)
    return family.refine_base(kind, base, metadata, name) if family is not None else base


def refine_folder_base(base: str, name: str) -> str:
    family = for_base_model(base)
    return family.refine_folder_base(base, name) if family is not None else base


def single_file_pipelines() -> dict[str, str]:
    return {b: c for fam in FAMILIES for b, c in fam.single_file_pipelines.items()}


def companion_bases() -> dict[str, tuple[str, ...]]:
    return {b: c for fam in FAMILIES for b, c in fam.companion_bases.items()}


def lora_family(norm_keys: list[str]) -> Family | None:
    """The first family (registry order) whose LoRA markers some of the normalised keys carry."""
    for fam in FAMILIES:
        if fam.lora_markers and any(m in nk for nk in norm_keys for m in fam.lora_markers):
            return fam
    return None


def lora_dit_widths() -> dict[int, str]:
    return {w: b for fam in FAMILIES for w, b in fam.lora_dit_widths.items()}


def lora_groups() -> dict[str, str]:
    """base model -> LoRA group, for every base model a family groups."""
    return {b: g for fam in FAMILIES for b, g in fam.lora_groups.items()}


def controlnet_groups() -> dict[str, str]:
    """base model -> ControlNet group, for every base model that takes ControlNets."""
    return {b: g for fam in FAMILIES for b, g in fam.controlnet_groups.items()}


def controlnet_family(pipe: Any = None, denoiser: Mapping[str, Any] | None = None) -> Family:
    """The family whose ControlNets a loaded pipeline (or a model's denoiser config) takes; else the default."""
    for fam in FAMILIES:
        if fam.controlnet_groups and fam.runs_controlnets_of(pipe, denoiser):
            return fam
    return DEFAULT


def latent_rgb(base_model: str) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...]] | None:
    """The step preview's latent -> RGB map: the family's, else the default family's."""
    family = for_base_model(base_model)
    factors = family.latent_rgb(base_model) if family is not None else None
    return factors if factors is not None else DEFAULT.latent_rgb(base_model)


# ---- what managers' modes, embeddings, single files and ControlNets ask; models/ for VAEs and text encoders ----


def truncates_strength(family_name: str) -> bool:
    """Whether the family named `family_name` counts img2img steps as min(int(steps * strength), steps)."""
    return any(fam.name == family_name and fam.truncates_strength for fam in FAMILIES)


def vae_latent_bases(latent_channels: int) -> tuple[str, ...]:
    """The base models a VAE file with this many latent channels may be named for."""
    return tuple(b for fam in FAMILIES for b in fam.vae_latent_bases.get(latent_channels, ()))


def vae_base(base: str) -> str:
    """The base model a standalone VAE named for `base` is filed under (Pony's is SDXL's, Flux's plain flux)."""
    family = for_base_model(base)
    return family.vae_base(base) if family is not None else base


def text_encoder_base(encoders: frozenset[str]) -> str:
    """The base model of a lone text-encoder file holding `encoders`; "unknown" when no family claims them."""
    return next((b for fam in FAMILIES if (b := fam.text_encoder_base(encoders)) is not None), "unknown")


def base_from_flags(metadata: Mapping[str, str]) -> str | None:
    """The base model a family's training flag in the metadata names, or None."""
    return next((b for fam in FAMILIES if (b := fam.base_from_flags(metadata)) is not None), None)


def embedding_layout(base_model: str) -> str | None:
    """The text-encoder layout of `base_model`'s textual inversions ("single", "sdxl"); None: it takes none."""
    family = for_base_model(base_model)
    return family.embedding_layouts.get(base_model) if family is not None else None


def config_sets() -> tuple[str, ...]:
    """Every packaged single-file config set (sdworker/model_configs/<set>)."""
    return tuple(s for fam in FAMILIES for s in fam.config_sets)


def config_set_layouts() -> dict[str, str]:
    """A config set's model_index.json `_class_name` -> its checkpoint layout."""
    return {c: layout for fam in FAMILIES for c, layout in fam.config_set_layouts.items()}


def vae_config_layout(base_model: str | None) -> str:
    """The config-set layout a single-file VAE detected as `base_model` loads with: the default family's."""
    return DEFAULT.vae_config_layout(base_model) or ""


def controlnet_config_base(cfg: Mapping[str, Any]) -> str:
    """The base model of a ControlNet folder's config.json: the family whose class it is, else the default's."""
    for fam in _default_last():
        found = fam.controlnet_config_base(cfg)
        if found is not None:
            return found
    return "unknown"


def controlnet_file_base(names: list[str]) -> str:
    """The base model of a single-file ControlNet by its tensor names: the first family that reads them."""
    return next((b for fam in _default_last() if (b := fam.controlnet_file_base(names)) is not None), "unknown")


def controlnet_vague_bases() -> dict[str, tuple[str, tuple[str, ...]]]:
    """ControlNet base models that name no model ("sd") -> (label, the ControlNet groups they fit)."""
    return {b: v for fam in FAMILIES for b, v in fam.controlnet_vague_bases.items()}


def controlnet_file_refusal(base: str) -> str | None:
    """Why a single-file ControlNet of `base` cannot be loaded, as its family says (None: it can)."""
    family = for_base_model(base)
    return family.controlnet_file_refusal(base) if family is not None else None
