"""Stable Diffusion 1.x / 2.x and SDXL (Pony): what the worker did before families existed.

Prompts go through prompts.encode (A1111 weighting, clip skip, compel, literal text), the
request's guidance_scale is classifier-free guidance, samplers come from the
managers.schedulers table, and every SD-only option (refiner, hires, ControlNets, LoRAs,
embeddings, standalone VAEs) is planned by the generation interface itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from ..base import Checked, Family, RunPlan
from .presets import PRESETS
from . import knowledge as kn

if TYPE_CHECKING:
    from ...models.refs import ModelRef
    from ...schemas.generation import GenerationRequest


class SDFamily(Family):
    name: ClassVar[str] = "sd"
    base_models: ClassVar[tuple[str, ...]] = ("sdxl", "pony", "sd_1_5", "sd_2")
    pipelines: ClassVar[dict[str, str]] = {
        "text2img": "AutoPipelineForText2Image",
        "img2img": "AutoPipelineForImage2Image",
        "inpainting": "AutoPipelineForInpainting",
    }
    model_index_classes: ClassVar[tuple[str, ...]] = (
        "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
        "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
    )
    builtin_presets: ClassVar[tuple[dict[str, Any], ...]] = PRESETS
    single_file_pipelines: ClassVar[dict[str, str]] = {
        "sdxl": "StableDiffusionXLPipeline", "pony": "StableDiffusionXLPipeline",
        "sd_1_5": "StableDiffusionPipeline", "sd_2": "StableDiffusionPipeline",
    }

    def folder_base_model(self, folder: Path, index: dict[str, Any]) -> str:
        """sdxl (sdxl_refiner without a first text encoder or with aesthetic scores), else sd_1_5
        (sd_2 when the UNet reads 1024-wide OpenCLIP states)."""
        if str(index.get("_class_name", "")).startswith("StableDiffusionXL"):
            if index.get("text_encoder") in (None, [None, None]) or index.get("requires_aesthetics_score"):
                return "sdxl_refiner"
            return "sdxl"
        try:
            unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
            if unet_cfg.get("cross_attention_dim") == 1024:
                return "sd_2"
        except (OSError, ValueError, AttributeError):
            pass
        return "sd_1_5"

    def check(self, req: "GenerationRequest", mode: str, ref: "ModelRef") -> Checked:
        checked = super().check(req, mode, ref)
        for fld in ("true_cfg_scale", "max_sequence_length"):
            if getattr(checked.req, fld) is not None:
                checked.warnings.append(f"{fld} ignored: it is a Flux option; {ref.model_id} is a {ref.base_model} model")
        return checked

    def prompt_kwargs(self, pipe: Any, req: "GenerationRequest") -> dict[str, Any]:
        from ...prompts.encode import pipeline_prompt_kwargs

        return pipeline_prompt_kwargs(pipe, req.prompt, req.negative_prompt, req.clip_skip, req.prompt_syntax)

    def call_kwargs(self, req: "GenerationRequest", plan: RunPlan) -> dict[str, Any]:
        return {"guidance_scale": req.guidance_scale}

    # ---- detection, ControlNets, previews (families.sd.knowledge) ----
    text_hints: ClassVar[tuple[tuple[int, str, str], ...]] = kn.TEXT_HINTS
    arch_prefixes: ClassVar[tuple[tuple[str, str], ...]] = kn.ARCH_PREFIXES
    folder_class_prefixes: ClassVar[tuple[str, ...]] = ("StableDiffusionXL", "StableDiffusion", "AltDiffusion")
    vae_scaling: ClassVar[dict[float, str]] = kn.VAE_SCALING
    lora_groups: ClassVar[dict[str, str]] = kn.LORA_GROUPS
    controlnet_groups: ClassVar[dict[str, str]] = kn.CONTROLNET_GROUPS
    controlnet_shape_keys: ClassVar[tuple[str, ...]] = kn.CONTROLNET_SHAPE_KEYS
    truncates_strength: ClassVar[bool] = True
    controlnet_vague_bases: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = kn.CONTROLNET_VAGUE_BASES
    vae_latent_bases: ClassVar[dict[int, tuple[str, ...]]] = kn.VAE_LATENT_BASES
    embedding_layouts: ClassVar[dict[str, str]] = kn.EMBEDDING_LAYOUTS
    config_sets: ClassVar[tuple[str, ...]] = kn.CONFIG_SETS
    config_set_layouts: ClassVar[dict[str, str]] = kn.CONFIG_SET_LAYOUTS

    def base_from_version(self, version: str) -> str | None:
        return kn.base_from_version(version)

    def detect_folder(self, folder: Path, index: dict[str, Any], unet: dict[str, Any]) -> str | None:
        return kn.detect_folder(folder, index, unet)

    def detect_component(self, cls: str, cfg: dict[str, Any]) -> tuple[str, str] | None:
        return kn.detect_component(cls, cfg)

    def refine_base(self, kind: str, base: str, metadata: Mapping[str, str], name: str | None) -> str:
        """Pony over SDXL when metadata (for checkpoints also the title or file name) says so."""
        from ...models._hints import says_pony

        if base == "sdxl" and says_pony(metadata, name, trust_title=kind in ("checkpoint", "unet", "unknown")):
            return "pony"
        return base

    def refine_folder_base(self, base: str, name: str) -> str:
        return "pony" if base == "sdxl" and "pony" in name.lower() else base

    def controlnet_pipeline(self, pipe: Any, mode: str) -> str | None:
        return kn.CONTROLNET_PIPELINES.get((hasattr(pipe, "text_encoder_2"), mode))

    def controlnet_multi(self, nets: list[Any]) -> Any:
        from diffusers.models.controlnets import MultiControlNetModel

        return MultiControlNetModel(nets)

    def latent_rgb(self, base_model: str) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...]] | None:
        return kn.latent_rgb(base_model)

    def detect_denoiser(self, unet: Mapping[str, tuple[int, ...]], whole: Mapping[str, tuple[int, ...]]) -> tuple[str, dict[str, Any]] | None:
        return kn.detect_denoiser(unet, whole)

    def detect_controlnet(self, body: Mapping[str, tuple[int, ...]], details: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        return kn.detect_controlnet(body, details)

    def text_encoder_base(self, encoders: frozenset[str]) -> str | None:
        return kn.text_encoder_base(encoders)

    def base_from_flags(self, metadata: Mapping[str, str]) -> str | None:
        return kn.base_from_flags(metadata)

    def vae_base(self, base: str) -> str:
        """Pony uses the SDXL VAE (refine_base turns it back into pony when metadata says so)."""
        return "sdxl" if base == "pony" else base

    def vae_config_layout(self, base_model: str | None) -> str | None:
        return kn.vae_config_layout(base_model)

    def controlnet_config_base(self, cfg: Mapping[str, Any]) -> str | None:
        return kn.controlnet_config_base(cfg)

    def controlnet_file_base(self, names: list[str]) -> str | None:
        return kn.controlnet_file_base(names)
