"""What detection, LoRAs and ControlNets know about FLUX.1 (dev, schnell, Krea, Fill).

Only dev (and its fine-tunes: Krea, Fill) has a guidance embedder (``guidance_embeds`` in the
transformer config, ``guidance_in.*`` / ``guidance_embedder.*`` in a LoRA); schnell lacks it. Krea
has dev's shapes and is told by its name or metadata only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

VARIANTS = ("flux_dev", "flux_schnell", "flux_krea")

TEXT_HINTS: tuple[tuple[int, str, str], ...] = (
    (20, r"flux.*schnell|schnell.*flux", "flux_schnell"),
    (20, r"flux.*krea|krea.*flux", "flux_krea"),
    (20, r"flux.*dev|dev.*flux", "flux_dev"),
    (20, r"flux", "flux"),
)
ARCH_PREFIXES: tuple[tuple[str, str], ...] = (("flux-1-dev", "flux_dev"), ("flux-1-schnell", "flux_schnell"), ("flux-1", "flux"))
VAE_SCALING = {0.3611: "flux"}
LORA_MARKERS = ("double_blocks_", "single_blocks_", "single_transformer_blocks_")
LORA_DIT_WIDTHS = {3072: "flux"}


def config_base(cfg: Mapping[str, Any]) -> str:
    """dev or schnell by the transformer's guidance embedder; plain flux when the config does not say."""
    embeds = cfg.get("guidance_embeds")
    return "flux_dev" if embeds is True else "flux_schnell" if embeds is False else "flux"


def detect_folder(folder: Path, index: dict[str, Any]) -> str | None:
    if str(index.get("_class_name", "")).startswith("Flux2"):
        return None  # FLUX.2 is no FLUX.1 model
    from ...models._folder import config_json

    return config_base(config_json(folder / "transformer" / "config.json"))


def detect_component(cls: str, cfg: dict[str, Any]) -> tuple[str, str] | None:
    if cls in ("FluxControlNetModel", "FluxMultiControlNetModel"):
        return "controlnet", "flux"
    if cls == "FluxTransformer2DModel":
        return "unet", config_base(cfg)
    return None


def named_variant(base: str, hint: str | None) -> str | None:
    """The variant a name or metadata `hint` gives a `base` that shapes left open (None: no change)."""
    if base == "flux" and hint in VARIANTS:
        return hint
    if base == "flux_dev" and hint == "flux_krea":
        return hint
    return None


def lora_base(norm_keys: list[str], details: dict[str, Any]) -> str:
    details["family"] = "flux"
    # only dev (and its fine-tunes) has a guidance embedder for a LoRA to train
    return "flux_dev" if any("guidance_in_" in nk or "guidance_embedder_" in nk for nk in norm_keys) else "flux"


# ---- LoRAs and ControlNets ------------------------------------------------------------------------------------

#: every FLUX.1 variant takes Flux LoRAs and Flux ControlNets (one transformer layout)
GROUPS = {"flux_dev": "Flux", "flux_schnell": "Flux", "flux_krea": "Flux", "flux": "Flux"}
# A Flux ControlNet's block outputs are added to the transformer's hidden states (same width), and
# diffusers gives the transformer the guidance the ControlNet's config asks for.
CONTROLNET_SHAPE_KEYS = ("num_attention_heads", "attention_head_dim", "joint_attention_dim", "pooled_projection_dim", "guidance_embeds")
CONTROLNET_PIPELINES: dict[str, str] = {
    "text2img": "FluxControlNetPipeline",
    "img2img": "FluxControlNetImg2ImgPipeline",
    "inpainting": "FluxControlNetInpaintPipeline",
}


# ---- single files -----------------------------------------------------------------------------------


def detect_denoiser(unet: Mapping[str, tuple[int, ...]]) -> tuple[str, dict[str, Any]] | None:
    """BFL's ``double_blocks``/``single_blocks`` or diffusers' ``single_transformer_blocks``; only dev
    carries a guidance embedder (``guidance_in.*`` / ``time_text_embed.guidance_embedder.*``). FLUX.2
    and Chroma share the names and are refused as unknown."""
    from ...models.shapes import has_prefix

    if has_prefix(unet, "single_stream_modulation.", "early_stream_modulations."):
        return "unknown", {"family": "flux2", "layout": "original"}
    original = has_prefix(unet, "double_blocks.", "single_blocks.")
    diffusers = has_prefix(unet, "single_transformer_blocks.")
    if not (original or diffusers):
        return None
    details: dict[str, Any] = {"family": "flux", "layout": "original" if original else "diffusers"}
    if has_prefix(unet, "distilled_guidance_layer."):
        return "unknown", {**details, "family": "chroma"}
    guidance = has_prefix(unet, "guidance_in.", "time_text_embed.guidance_embedder.")
    img_in = unet.get("img_in.weight") or unet.get("x_embedder.weight")
    if img_in and len(img_in) == 2:
        details["in_channels"] = img_in[1]
        details["variant"] = {384: "fill", 128: "depth"}.get(img_in[1], "dev" if guidance else "schnell")
    details["guidance_embed"] = guidance
    return ("flux_dev" if guidance else "flux_schnell"), details


def detect_controlnet(body: Mapping[str, tuple[int, ...]], details: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    from ...models.shapes import has_prefix

    if has_prefix(body, "controlnet_single_blocks.", "controlnet_x_embedder.", "single_transformer_blocks.", "double_blocks.", "single_blocks."):
        return "flux", {**details, "family": "flux"}
    return None


def controlnet_config_base(cfg: Mapping[str, Any]) -> str | None:
    """Every Flux ControlNet (or transformer) config is the Flux group's."""
    return "flux" if str(cfg.get("_class_name", "")).startswith("Flux") else None


SINGLE_FILE_CONTROLNET = "single-file Flux ControlNets are not supported; use its diffusers folder (config.json + weights)"


# ---- VAEs ----------------------------------------------------------------------------------------------

#: one 16-channel VAE serves every FLUX.1 variant, filed under plain flux
VAE_LATENT_BASES: dict[int, tuple[str, ...]] = {16: ("flux", "flux_dev", "flux_schnell", "flux_krea")}
