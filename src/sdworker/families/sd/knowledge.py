"""What detection, ControlNets and step previews know about Stable Diffusion 1.x / 2.x / SDXL.

The facts are the ones diffusers' single_file_utils and ComfyUI rely on: the U-Net's cross-attention
context width is 768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL base and 1280 for the refiner; the
SDXL "adm" vector is 2816 wide on the base and 2560 on the refiner. Pony is SDXL by shape, told
apart only by its name or metadata. SD is the default family: a U-Net folder of a pipeline class no
family claims is read by its rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

CONTEXT_BASE = {768: "sd_1_5", 1024: "sd_2", 2048: "sdxl", 1280: "sdxl_refiner"}
_XL = r"sdxl|(?<![a-z])xl(?![a-z])|xl(?=v?\d|[\s_.-]|$)"

#: (rank, regex, base): Pony before every other family's names, the SD versions after them all.
TEXT_HINTS: tuple[tuple[int, str, str], ...] = (
    (0, r"pony", "pony"),
    (50, rf"({_XL}).*refiner|refiner.*(sdxl|xl)", "sdxl_refiner"),
    (50, _XL, "sdxl"),
    (50, r"sd[\s_.-]?v?2(?:[\s_.-]?[01])?(?!\d)", "sd_2"),
    (50, r"sd[\s_.-]?v?1[\s_.-]?5|v1-5|sd[\s_.-]?v1(?!\d)", "sd_1_5"),
)
ARCH_PREFIXES: tuple[tuple[str, str], ...] = (
    ("stable-diffusion-xl-v1-refiner", "sdxl_refiner"),
    ("stable-diffusion-xl", "sdxl"),
    ("stable-diffusion-v2", "sd_2"),
    ("stable-diffusion-v1", "sd_1_5"),
)
#: SDXL's reference VAE (SD 1.x and 2.x share a VAE whose config has the default factor).
VAE_SCALING = {0.13025: "sdxl"}


def base_from_version(version: str) -> str | None:
    """kohya's ss_base_model_version (lowered) for SD 1.x / 2.x / SDXL."""
    if version.startswith("sdxl"):
        return "sdxl_refiner" if "refiner" in version else "sdxl"
    if version.startswith(("sd_v2", "sd_2", "sd2", "v2")):
        return "sd_2"
    if version.startswith(("sd_v1", "sd_1", "sd1", "v1")):
        return "sd_1_5"
    return None


def unet_base(cfg: Mapping[str, Any]) -> str:
    """The base model of a UNet2DConditionModel / ControlNetModel config."""
    proj = cfg.get("projection_class_embeddings_input_dim")
    if proj == 2560:
        return "sdxl_refiner"
    if proj == 2816 or cfg.get("addition_embed_type") == "text_time":
        return "sdxl_refiner" if cfg.get("cross_attention_dim") == 1280 else "sdxl"
    ctx = cfg.get("cross_attention_dim")
    return CONTEXT_BASE.get(ctx, "unknown") if isinstance(ctx, int) else "unknown"


def _present(value: Any) -> bool:
    """model_index.json marks an absent component as null or [null, null]."""
    return value is not None and value != [None, None]


def detect_folder(folder: Path, index: dict[str, Any], unet: dict[str, Any]) -> str:
    """SDXL (refiner without CLIP-L or with aesthetic scores), SD 1.x / 2.x by context width; any
    other class by its U-Net, if it has one."""
    cls = str(index.get("_class_name", ""))
    if cls.startswith("StableDiffusionXL"):
        no_clip_l = "text_encoder" in index and not _present(index["text_encoder"])
        refiner = no_clip_l or bool(index.get("requires_aesthetics_score"))
        return "sdxl_refiner" if refiner or unet_base(unet) == "sdxl_refiner" else "sdxl"
    if cls.startswith(("StableDiffusion", "AltDiffusion")):
        return "sd_2" if unet.get("cross_attention_dim") == 1024 else "sd_1_5"
    return unet_base(unet) if unet else "unknown"


def detect_component(cls: str, cfg: dict[str, Any]) -> tuple[str, str] | None:
    if cls == "ControlNetModel":
        return "controlnet", unet_base(cfg)
    if cls == "UNet2DConditionModel":
        return "unet", unet_base(cfg)
    return None


# ---- LoRAs and ControlNets ------------------------------------------------------------------------------------

#: Bases whose LoRAs fit each other's models (by layer shapes).
LORA_GROUPS = {"sd_1_5": "SD 1.x", "sd_1": "SD 1.x", "sd_2": "SD 2.x", "sdxl": "SDXL", "pony": "SDXL", "sdxl_refiner": "SDXL refiner"}
#: Base models that share ControlNets (a Pony model is an SDXL model).
CONTROLNET_GROUPS = {"sd_1_5": "SD 1.x", "sd_2": "SD 2.x", "sdxl": "SDXL", "pony": "SDXL"}
CONTROLNET_SHAPE_KEYS = ("cross_attention_dim", "block_out_channels", "addition_embed_type")
# (SDXL?, mode) -> the diffusers pipeline that runs it; the control image goes to `image` in
# text2img and to `control_image` where `image` is the init image (img2img, inpainting).
CONTROLNET_PIPELINES: dict[tuple[bool, str], str] = {
    (False, "text2img"): "StableDiffusionControlNetPipeline",
    (False, "img2img"): "StableDiffusionControlNetImg2ImgPipeline",
    (False, "inpainting"): "StableDiffusionControlNetInpaintPipeline",
    (True, "text2img"): "StableDiffusionXLControlNetPipeline",
    (True, "img2img"): "StableDiffusionXLControlNetImg2ImgPipeline",
    (True, "inpainting"): "StableDiffusionXLControlNetInpaintPipeline",
}


# ---- step previews ----------------------------------------------------------------------------------

# ComfyUI's "latent2rgb" fits (4x3 factors: latent channel -> R, G, B; bias per RGB channel);
# SD 1.x and 2.x share a VAE, SDXL has its own.
_SD15 = (
    ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
    (0.0, 0.0, 0.0),
)
_SDXL = (
    ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
    (0.1084, -0.0175, -0.0011),
)
LATENT_RGB: dict[str, tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    "sd_1_5": _SD15,
    "sd_2": _SD15,
    "sdxl": _SDXL,
    "pony": _SDXL,
    "sdxl_refiner": _SDXL,
}


def latent_rgb(base_model: str) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]:
    """The map of `base_model`; any other 4-channel latents get SDXL's (sdxl*) or SD 1.x's."""
    return LATENT_RGB.get(base_model, _SDXL if base_model.startswith("sdxl") else _SD15)


# ---- single files -----------------------------------------------------------------------------------

ADM_BASE = {2816: "sdxl", 2560: "sdxl_refiner"}


def detect_denoiser(unet: Mapping[str, tuple[int, ...]], whole: Mapping[str, tuple[int, ...]]) -> tuple[str, dict[str, Any]] | None:
    """An SD U-Net, original (``input_blocks``) or diffusers (``down_blocks``) layout: the SDXL adm
    vector, else the context width, else the bundled text encoders say which."""
    from ...models.shapes import context_dim, first_dim, has_prefix

    if has_prefix(unet, "input_blocks.") and has_prefix(unet, "middle_block.", "output_blocks.", "time_embed."):
        layout = "original"
    elif has_prefix(unet, "down_blocks.") and has_prefix(unet, "conv_in.", "time_embedding.", "mid_block."):
        layout = "diffusers"
    else:
        return None
    details: dict[str, Any] = {"family": "sd_unet", "layout": layout}
    ctx = context_dim(unet)
    adm = first_dim(unet, ("label_emb.0.0.weight", "add_embedding.linear_1.weight"), 1)
    in_ch = first_dim(unet, ("input_blocks.0.0.weight", "conv_in.weight"), 1)
    details.update({k: v for k, v in (("context_dim", ctx), ("adm_in_channels", adm), ("in_channels", in_ch)) if v})
    if in_ch == 9:
        details["variant"] = "inpainting"
    elif in_ch == 8:
        details["variant"] = "instruct-pix2pix"
    if "edm_mean" in whole:
        details["variant"] = "playground-v2.5"
    base = ADM_BASE.get(adm or 0) or CONTEXT_BASE.get(ctx or 0) or _base_from_encoders(whole)
    return base, details


def _base_from_encoders(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Fallback when the U-Net says nothing: the bundled text encoders' layout."""
    from ...models.shapes import has_prefix

    if has_prefix(shapes, "conditioner.embedders.1."):
        return "sdxl"
    if has_prefix(shapes, "conditioner.embedders.0.model."):
        return "sdxl_refiner"
    if has_prefix(shapes, "cond_stage_model.model."):
        return "sd_2"
    if has_prefix(shapes, "cond_stage_model.transformer."):
        return "sd_1_5"
    return "unknown"


def detect_controlnet(body: Mapping[str, tuple[int, ...]], details: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An SD / SDXL ControlNet by its adm vector or context width (the default family reads any)."""
    from ...models.shapes import context_dim, first_dim

    ctx = context_dim(body)
    adm = first_dim(body, ("label_emb.0.0.weight", "add_embedding.linear_1.weight"), 1)
    details.update({k: v for k, v in (("context_dim", ctx), ("adm_in_channels", adm)) if v})
    return ADM_BASE.get(adm or 0) or CONTEXT_BASE.get(ctx or 0) or "unknown", details


def controlnet_config_base(cfg: Mapping[str, Any]) -> str:
    """sdxl for SDXL-conditioned UNets/ControlNets (text_time embedding), else SD 1.x/2.x by context
    width; "sd" when the width says neither (the default family reads every ControlNet config)."""
    if cfg.get("addition_embed_type") == "text_time":
        return "sdxl"
    return {768: "sd_1_5", 1024: "sd_2"}.get(cfg.get("cross_attention_dim"), "sd")  # type: ignore[arg-type]


#: "sd": an SD ControlNet whose text-context width nothing read (SD 1.x or 2.x, not SDXL)
CONTROLNET_VAGUE_BASES: dict[str, tuple[str, tuple[str, ...]]] = {"sd": ("SD 1.x/2.x", ("SD 1.x", "SD 2.x"))}


def controlnet_file_base(names: list[str]) -> str:
    """sdxl when the single file has SDXL's adm embedding, else "sd" (SD 1.x or 2.x)."""
    return "sdxl" if any(k.startswith(("label_emb.", "add_embedding.")) for k in names) else "sd"


# ---- VAEs, text encoders, textual inversions ---------------------------------------------------------

#: SD 1.x, 2.x and SDXL share one 4-channel VAE network (only the weights differ)
VAE_LATENT_BASES: dict[int, tuple[str, ...]] = {4: ("sd_1_5", "sd_2", "sdxl", "pony")}
#: one CLIP for SD 1.x / 2.x textual inversions; clip_l + clip_g for SDXL's (and Pony's)
EMBEDDING_LAYOUTS = {"sdxl": "sdxl", "pony": "sdxl", "sd_1_5": "single", "sd_2": "single"}


def text_encoder_base(encoders: frozenset[str]) -> str | None:
    """OpenCLIP-H alone is SD 2.x's text encoder."""
    return "sd_2" if encoders <= {"open_clip_h", "clip_h"} else None


def base_from_flags(metadata: Mapping[str, str]) -> str | None:
    """kohya's ss_v2 flag marks an SD 2.x training run."""
    return "sd_2" if str(metadata.get("ss_v2", "")).lower() == "true" else None


# ---- single-file config sets (sdworker/model_configs/<set>) ------------------------------------------

CONFIG_SETS: tuple[str, ...] = ("sd15", "sdxl", "tiny-sd15", "tiny-sdxl", "tiny-sd15-clip", "tiny-sdxl-clip")
CONFIG_SET_LAYOUTS = {"StableDiffusionPipeline": "sd15", "StableDiffusionXLPipeline": "sdxl"}


def vae_config_layout(base_model: str | None) -> str:
    """SDXL's config for SDXL-family VAEs (Pony's and the refiner's too), SD 1.x's for any other."""
    return "sdxl" if base_model in ("sdxl", "pony", "sdxl_refiner") else "sd15"
