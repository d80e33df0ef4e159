"""Model inspection without loading weights: header parsing, kind/base detection, hashes, sidecars.

Every case writes a real (tiny) .safetensors file with the key names and the shapes that
matter for detection; all other dims are 1 so each file is a few KB.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import save_file

from sdworker.models import (
    Detection,
    HashCache,
    HeaderError,
    SidecarError,
    UnsupportedModelFile,
    detect,
    detect_diffusers_folder,
    detect_file,
    guess_from_path,
    hashes,
    inspect_path,
    parse_header_bytes,
    read_header,
    sidecar,
)


def write(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None) -> Path:
    """A real safetensors file: zeros of the given shapes (fp16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path), metadata=metadata)
    return path


def kb(det: Detection) -> tuple[str, str]:
    return det.kind, det.base_model


def raw_file(path: Path, header: Any, data: bytes = b"", length: int | None = None) -> Path:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


# ---- key sets -------------------------------------------------------------------------------------------

U = "model.diffusion_model."
ATTN = "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
SD_UNET = {U + "input_blocks.0.0.weight": (1, 4, 1, 1), U + "middle_block.0.in_layers.0.weight": (1,), U + "time_embed.0.weight": (1, 1)}
SD_VAE = {"first_stage_model.decoder.conv_in.weight": (1, 4, 1, 1), "first_stage_model.encoder.conv_in.weight": (1, 3, 1, 1)}
DIFF_UNET = {"conv_in.weight": (1, 4, 1, 1), "time_embedding.linear_1.weight": (1, 1), "down_blocks.0.resnets.0.conv1.weight": (1, 1, 1, 1)}
FLUX = {"double_blocks.0.img_attn.norm.key_norm.scale": (1,), "single_blocks.0.linear1.weight": (1, 1), "img_in.weight": (1, 64)}
FLUX_DIFF = {
    "transformer_blocks.0.attn.norm_added_k.weight": (1,),
    "single_transformer_blocks.0.attn.to_k.weight": (1, 1),
    "x_embedder.weight": (1, 64),
}
KOHYA_ATTN = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
KOHYA_TE = "lora_te_text_model_encoder_layers_0_self_attn_k_proj"


def kohya(stem: str, in_dim: int, rank: int = 4) -> dict[str, tuple[int, ...]]:
    return {f"{stem}.lora_down.weight": (rank, in_dim), f"{stem}.lora_up.weight": (1, rank), f"{stem}.alpha": ()}


CASES: dict[str, tuple[dict[str, tuple[int, ...]], dict[str, str] | None, str, str]] = {
    # name: (shapes, metadata, expected kind, expected base)
    "sd15.safetensors": (
        {**SD_UNET, U + ATTN: (1, 768), **SD_VAE, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (1, 768)},
        None, "checkpoint", "sd_1_5"),
    "sd2.safetensors": (
        {**SD_UNET, U + ATTN: (1, 1024), **SD_VAE, "cond_stage_model.model.token_embedding.weight": (1, 1024)},
        None, "checkpoint", "sd_2"),
    "sdxl.safetensors": (
        {**SD_UNET, U + ATTN: (1, 2048), U + "label_emb.0.0.weight": (1, 2816), **SD_VAE,
         "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (1, 768),
         "conditioner.embedders.1.model.token_embedding.weight": (1, 1280)},
        None, "checkpoint", "sdxl"),
    "refiner.safetensors": (
        {**SD_UNET, U + ATTN: (1, 1280), U + "label_emb.0.0.weight": (1, 2560), **SD_VAE,
         "conditioner.embedders.0.model.token_embedding.weight": (1, 1280)},
        None, "checkpoint", "sdxl_refiner"),
    # no U-Net dims at all: the bundled text encoders decide
    "xl_by_encoders.safetensors": ({**SD_UNET, **SD_VAE, "conditioner.embedders.1.model.text_projection": (1, 1)}, None, "checkpoint", "sdxl"),
    "pony_by_title.safetensors": (
        {**SD_UNET, U + ATTN: (1, 2048), U + "label_emb.0.0.weight": (1, 2816), **SD_VAE},
        {"modelspec.title": "Pony Diffusion V6 XL", "modelspec.architecture": "stable-diffusion-xl-v1-base"},
        "checkpoint", "pony"),
    "ponyDiffusionV6XL.safetensors": ({**SD_UNET, U + ATTN: (1, 2048), **SD_VAE}, None, "checkpoint", "pony"),
    "sdxl_unet_diffusers.safetensors": (
        {**DIFF_UNET, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (1, 2048),
         "add_embedding.linear_1.weight": (1, 2816)},
        None, "unet", "sdxl"),
    "sd15_unet_bare.safetensors": (
        {"input_blocks.0.0.weight": (1, 4, 1, 1), "middle_block.0.x": (1,), "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (1, 768)},
        None, "unet", "sd_1_5"),
    "sd3_medium.safetensors": (
        {U + f"joint_blocks.{i}.context_block.adaLN_modulation.1.bias": (1,) for i in range(24)}
        | {"text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight": (1, 1280),
           "text_encoders.t5xxl.transformer.shared.weight": (1, 4096), **SD_VAE},
        None, "checkpoint", "sd3"),
    "sd3_transformer_diffusers.safetensors": (
        {"transformer_blocks.0.attn.add_k_proj.weight": (1, 1), "pos_embed.proj.weight": (1, 16, 1, 1), "context_embedder.weight": (1, 1)},
        None, "unet", "sd3"),
    "flux1-dev.safetensors": ({**FLUX, "guidance_in.in_layer.weight": (1, 256)}, None, "unet", "flux_dev"),
    "flux1-schnell.safetensors": (FLUX, None, "unet", "flux_schnell"),
    "renamed_dev.safetensors": ({**FLUX_DIFF, "time_text_embed.guidance_embedder.linear_1.weight": (1, 256)}, None, "unet", "flux_dev"),
    "renamed_schnell.safetensors": (FLUX_DIFF, None, "unet", "flux_schnell"),
    "flux_aio.safetensors": (
        {U + k: s for k, s in FLUX.items()} | {U + "guidance_in.in_layer.weight": (1, 256),
        "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (1, 768), **SD_VAE},
        None, "checkpoint", "flux_dev"),
    # LoRAs
    "lora_sd15_kohya.safetensors": ({**kohya(KOHYA_ATTN, 768), **kohya(KOHYA_TE, 768)}, None, "lora", "sd_1_5"),
    "lora_sd2_kohya.safetensors": (kohya(KOHYA_ATTN, 1024), None, "lora", "sd_2"),
    "lora_sd2_te_only.safetensors": (kohya(KOHYA_TE, 1024), None, "lora", "sd_2"),
    "lora_sdxl_te2.safetensors": (
        {**kohya("lora_te1_text_model_encoder_layers_0_self_attn_k_proj", 768),
         **kohya("lora_te2_text_model_encoder_layers_0_self_attn_k_proj", 1280)},
        None, "lora", "sdxl"),
    "lora_sdxl_unet.safetensors": (kohya("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 2048), None, "lora", "sdxl"),
    "lora_sdxl_peft.safetensors": (
        {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048),
         "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (1, 4)},
        None, "lora", "sdxl"),
    "lora_sd15_diffusers_old.safetensors": (
        {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": (4, 768),
         "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": (1, 4)},
        None, "lora", "sd_1_5"),
    "lora_flux_peft.safetensors": (
        {"transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": (4, 3072),
         "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight": (1, 4)},
        None, "lora", "flux"),
    "lora_flux_dev_declared.safetensors": (
        kohya("lora_unet_double_blocks_0_img_attn_qkv", 3072), {"modelspec.architecture": "flux-1-dev/lora"}, "lora", "flux_dev"),
    "lora_sd3_peft.safetensors": (
        {"transformer.transformer_blocks.0.attn.to_k.lora_A.weight": (4, 1536),
         "transformer.transformer_blocks.0.attn.to_k.lora_B.weight": (1, 4)},
        None, "lora", "sd3"),
    "lora_sd3_kohya.safetensors": (kohya("lora_unet_joint_blocks_0_x_block_attn_qkv", 1536), None, "lora", "sd3"),
    "lora_by_metadata.safetensors": (kohya("lora_unet_conv_in", 4), {"ss_base_model_version": "sdxl_base_v1-0"}, "lora", "sdxl"),
    "lora_pony_trained.safetensors": (
        kohya("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 2048),
        {"ss_sd_model_name": "ponyDiffusionV6XL_v6StartWithThisOne.safetensors"}, "lora", "pony"),
    # a character LoRA *about* ponies for plain SDXL: the name is not training metadata
    "my_little_pony_character.safetensors": (kohya("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 2048), None, "lora", "sdxl"),
    "loha_sd15.safetensors": (
        {f"{KOHYA_ATTN}.hada_w1_a": (1, 4), f"{KOHYA_ATTN}.hada_w1_b": (4, 768), f"{KOHYA_ATTN}.alpha": ()}, None, "lora", "sd_1_5"),
    # embeddings
    "emb_sd15.safetensors": ({"emb_params": (2, 768)}, None, "embedding", "sd_1_5"),
    "emb_sd2.safetensors": ({"emb_params": (3, 1024)}, None, "embedding", "sd_2"),
    "emb_sdxl.safetensors": ({"clip_l": (2, 768), "clip_g": (2, 1280)}, None, "embedding", "sdxl"),
    "emb_diffusers.safetensors": ({"<cat-toy>": (768,)}, None, "embedding", "sd_1_5"),
    # VAEs: SD 1.x/2.x/SDXL VAEs share one architecture, so only names/metadata tell them apart
    "vae-ft-mse-840000-ema-pruned.safetensors": (
        {"encoder.conv_in.weight": (1, 3, 1, 1), "decoder.conv_in.weight": (1, 4, 1, 1), "quant_conv.weight": (1, 1, 1, 1)},
        None, "vae", "unknown"),
    "sdxl_vae.safetensors": ({"encoder.conv_in.weight": (1, 3, 1, 1), "decoder.conv_in.weight": (1, 4, 1, 1)}, None, "vae", "sdxl"),
    "prefixed_vae.safetensors": (SD_VAE, {"modelspec.architecture": "stable-diffusion-xl-v1-base"}, "vae", "sdxl"),
    "diffusers_vae.safetensors": (
        {"encoder.conv_in.weight": (1, 3, 1, 1), "encoder.down_blocks.0.resnets.0.conv1.weight": (1, 1, 1, 1),
         "decoder.conv_in.weight": (1, 4, 1, 1)},
        None, "vae", "unknown"),
    "ae.safetensors": ({"encoder.conv_in.weight": (1, 3, 1, 1), "decoder.conv_in.weight": (1, 16, 1, 1)}, None, "vae", "unknown"),
    "flux_vae.safetensors": ({"encoder.conv_in.weight": (1, 3, 1, 1), "decoder.conv_in.weight": (1, 16, 1, 1)}, None, "vae", "flux"),
    # a 4-channel VAE cannot be Flux whatever its name says
    "flux_named_sd_vae.safetensors": ({"encoder.conv_in.weight": (1, 3, 1, 1), "decoder.conv_in.weight": (1, 4, 1, 1)}, None, "vae", "unknown"),
    # ControlNets
    "control_sd15_canny.safetensors": (
        {"control_model.input_hint_block.0.weight": (1, 3, 1, 1), "control_model.zero_convs.0.0.weight": (1, 1, 1, 1),
         "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (1, 768)},
        None, "controlnet", "sd_1_5"),
    "control_sd21_noprefix.safetensors": (
        {"input_hint_block.0.weight": (1, 3, 1, 1), "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (1, 1024)},
        None, "controlnet", "sd_2"),
    "controlnet_sdxl_diffusers.safetensors": (
        {"controlnet_cond_embedding.conv_in.weight": (1, 3, 1, 1), "controlnet_down_blocks.0.weight": (1, 1, 1, 1),
         "add_embedding.linear_1.weight": (1, 2816), **DIFF_UNET},
        None, "controlnet", "sdxl"),
    "controlnet_flux.safetensors": (
        {"controlnet_x_embedder.weight": (1, 64), "controlnet_blocks.0.weight": (1, 1), **FLUX_DIFF}, None, "controlnet", "flux"),
    "control_lora_sdxl.safetensors": (
        {"lora_controlnet": (1,), "input_hint_block.0.weight": (1, 3, 1, 1), "label_emb.0.0.weight": (1, 2816)},
        None, "controlnet", "sdxl"),
    # upscalers (ESRGAN family)
    "4x_old_esrgan.safetensors": ({"model.0.weight": (1, 3, 3, 3), "model.1.sub.0.RDB1.conv1.0.weight": (1, 1, 1, 1)}, None, "upscaler", "unknown"),
    "RealESRGAN_x4plus.safetensors": (
        {"params_ema.conv_first.weight": (1, 3, 3, 3), "params_ema.body.0.rdb1.conv1.weight": (1, 1, 1, 1)}, None, "upscaler", "unknown"),
    "realesr-general-x4v3.safetensors": ({"body.0.weight": (1, 3, 3, 3), "body.1.weight": (1,), "body.2.weight": (1, 1, 3, 3)}, None, "upscaler", "unknown"),
    # text encoders
    "clip_l.safetensors": ({"text_model.embeddings.token_embedding.weight": (1, 768), "text_model.final_layer_norm.weight": (768,)}, None, "text_encoder", "unknown"),
    "t5xxl_fp16.safetensors": ({"shared.weight": (1, 4096), "encoder.block.0.layer.0.SelfAttention.k.weight": (1, 1)}, None, "text_encoder", "unknown"),
    # nothing recognisable
    "mystery.safetensors": ({"foo.weight": (1, 1)}, None, "unknown", "unknown"),
    "mystery_lora.safetensors": ({"foo.weight": (1, 1)}, {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, "lora", "sdxl"),
}


@pytest.fixture(scope="module")
def case_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cases")
    return {name: write(root / name, shapes, md) for name, (shapes, md, _, _) in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_detect_file(case_files: dict[str, Path], name: str) -> None:
    _, _, kind, base = CASES[name]
    det = detect_file(case_files[name])
    assert (det.kind, det.base_model, det.format) == (kind, base, "safetensors"), det.details
    json.dumps(det.to_dict())  # details stay plain JSON


def test_detection_details(case_files: dict[str, Path]) -> None:
    sdxl = detect_file(case_files["sdxl.safetensors"]).details
    assert sdxl["context_dim"] == 2048 and sdxl["adm_in_channels"] == 2816 and sdxl["has_vae"]
    assert sdxl["text_encoders"] == ["clip_l", "open_clip_g"]
    assert detect_file(case_files["sd3_medium.safetensors"]).details["depth"] == 24
    lora = detect_file(case_files["lora_sd15_kohya.safetensors"]).details
    assert lora["lora_format"] == "kohya" and lora["rank"] == 4 and lora["context_dim"] == 768
    assert detect_file(case_files["lora_sdxl_peft.safetensors"]).details["lora_format"] == "peft"
    assert detect_file(case_files["loha_sd15.safetensors"]).details["lora_format"] == "lycoris"
    assert detect_file(case_files["ae.safetensors"]).details["latent_channels"] == 16
    assert detect_file(case_files["emb_sdxl.safetensors"]).details["vectors"] == 2
    assert detect_file(case_files["control_lora_sdxl.safetensors"]).details["control_lora"] is True


def test_detect_variants_from_shapes() -> None:
    inpaint = detect({**SD_UNET, U + "input_blocks.0.0.weight": (1, 9, 1, 1), U + ATTN: (1, 768), **SD_VAE})
    assert (inpaint.base_model, inpaint.details["variant"]) == ("sd_1_5", "inpainting")
    fill = detect({**FLUX, "img_in.weight": (1, 384), "guidance_in.in_layer.weight": (1, 1)})
    assert (fill.base_model, fill.details["variant"]) == ("flux_dev", "fill")
    krea = detect({**FLUX, "guidance_in.in_layer.weight": (1, 1)}, name="flux1-krea-dev.safetensors")
    assert krea.base_model == "flux_krea"
    assert detect({**FLUX, "distilled_guidance_layer.in_proj.bias": (1,)}).base_model == "unknown"  # Chroma, not schnell
    vpred = detect({**SD_UNET, U + ATTN: (1, 2048), **SD_VAE, "v_pred": ()})
    assert vpred.details["prediction_type"] == "v"
    assert Detection("vae", "unknown") == Detection("vae", "unknown", "safetensors", {})
    # PixArt-style DiT (self-attention only, no joint attention) is not SD3
    assert detect({"transformer_blocks.0.attn1.to_k.weight": (1, 1), "pos_embed.proj.weight": (1, 4, 1, 1)}).kind == "unknown"
    # SD 1.x/2.x have one transformer block per attention; a deeper one in a unet-only LoRA means SDXL
    deep = detect(kohya("lora_unet_input_blocks_7_1_transformer_blocks_3_ff_net_2", 1280))
    assert (deep.kind, deep.base_model) == ("lora", "sdxl")


@pytest.mark.parametrize(
    ("path", "kind", "base"),
    [
        ("models/Lora/char_v2x.pt", "lora", "unknown"),
        ("models/ESRGAN/4x-UltraSharp.pth", "upscaler", "unknown"),
        ("downloads/RealESRGAN_x4plus.pth", "upscaler", "unknown"),
        ("models/Stable-diffusion/v1-5-pruned-emaonly.ckpt", "checkpoint", "sd_1_5"),
        ("models/Stable-diffusion/sdxl_vae.pt", "vae", "sdxl"),
        ("models/VAE/vae-ft-mse-840000-ema-pruned.ckpt", "vae", "unknown"),
        ("models/embeddings/bad_prompt.pt", "embedding", "unknown"),
        ("x/unet/diffusion_pytorch_model.bin", "unet", "unknown"),
        ("control_v11p_sd15_canny.pth", "controlnet", "sd_1_5"),
        ("random.ckpt", "unknown", "unknown"),
    ],
)
def test_guess_pickles_from_path(path: str, kind: str, base: str) -> None:
    det = guess_from_path(Path("/srv") / path)
    assert (det.kind, det.base_model, det.format, det.details["pickle"]) == (kind, base, "ckpt", True)


# ---- diffusers folders ----------------------------------------------------------------------------------


def test_tiny_diffusers_pipelines(models_dir: Path) -> None:
    sdxl = detect_diffusers_folder(models_dir / "tiny-sdxl")
    assert (sdxl.kind, sdxl.base_model, sdxl.format) == ("checkpoint", "sdxl", "diffusers")
    assert sdxl.details["pipeline_class"] == "StableDiffusionXLPipeline"
    sd15 = detect_diffusers_folder(models_dir / "tiny-sd15")
    assert (sd15.kind, sd15.base_model) == ("checkpoint", "sd_1_5")
    # component folders carry only config.json
    assert kb(detect_diffusers_folder(models_dir / "tiny-sdxl" / "vae")) == ("vae", "sdxl")  # scaling_factor 0.13025
    assert kb(detect_diffusers_folder(models_dir / "tiny-sd15" / "vae")) == ("vae", "unknown")
    assert kb(detect_diffusers_folder(models_dir / "tiny-sdxl" / "unet")) == ("unet", "sdxl")
    assert detect_diffusers_folder(models_dir / "tiny-sd15" / "text_encoder").kind == "text_encoder"


def test_real_diffusers_weight_files(models_dir: Path) -> None:
    """The key names diffusers/transformers really write, with the tiny dims widened to real ones."""
    root = models_dir / "tiny-sdxl"
    shapes = read_header(root / "unet" / "diffusion_pytorch_model.safetensors").shapes()
    assert kb(detect(shapes)) == ("unet", "unknown")  # tiny dims match no real model
    widened = {k: (s[0], 2048) if k.endswith("attn2.to_k.weight") else s for k, s in shapes.items()}
    assert detect(widened).base_model == "sdxl"
    widened["add_embedding.linear_1.weight"] = (1, 2560)
    assert detect(widened).base_model == "sdxl_refiner"
    sd15 = {k: (s[0], 768) if k.endswith("attn2.to_k.weight") else s
            for k, s in read_header(models_dir / "tiny-sd15" / "unet" / "diffusion_pytorch_model.safetensors").shapes().items()}
    assert kb(detect(sd15)) == ("unet", "sd_1_5")
    vae = detect_file(root / "vae" / "diffusion_pytorch_model.safetensors")
    assert (vae.kind, vae.details["layout"], vae.details["latent_channels"]) == ("vae", "diffusers", 4)
    for sub in ("text_encoder", "text_encoder_2"):
        assert detect_file(root / sub / "model.safetensors").kind == "text_encoder"


def _folder(root: Path, index: dict[str, Any] | None, configs: dict[str, dict[str, Any]]) -> Path:
    root.mkdir(parents=True)
    if index is not None:
        (root / "model_index.json").write_text(json.dumps(index))
    for sub, cfg in configs.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / "config.json").write_text(json.dumps(cfg))
    return root


def test_synthetic_diffusers_folders(tmp_path: Path) -> None:
    refiner = _folder(tmp_path / "refiner", {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None],
                                            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}, {})
    assert detect_diffusers_folder(refiner).base_model == "sdxl_refiner"
    sd2 = _folder(tmp_path / "sd2", {"_class_name": "StableDiffusionPipeline"}, {"unet": {"cross_attention_dim": 1024}})
    assert detect_diffusers_folder(sd2).base_model == "sd_2"
    pony = _folder(tmp_path / "ponyV6", {"_class_name": "StableDiffusionXLPipeline", "text_encoder": ["transformers", "CLIPTextModel"]}, {})
    assert detect_diffusers_folder(pony).base_model == "pony"
    schnell = _folder(tmp_path / "f1", {"_class_name": "FluxPipeline"}, {"transformer": {"guidance_embeds": False}})
    assert detect_diffusers_folder(schnell).base_model == "flux_schnell"
    sd3 = _folder(tmp_path / "s3", {"_class_name": "StableDiffusion3Pipeline"}, {})
    assert detect_diffusers_folder(sd3).base_model == "sd3"
    cn = _folder(tmp_path / "cn", None, {".": {"_class_name": "ControlNetModel", "cross_attention_dim": 768}})
    det = detect_diffusers_folder(cn)
    assert (det.kind, det.base_model, det.format) == ("controlnet", "sd_1_5", "diffusers")
    cnxl = _folder(tmp_path / "cnxl", None, {".": {"_class_name": "ControlNetModel", "cross_attention_dim": 2048, "addition_embed_type": "text_time"}})
    assert detect_diffusers_folder(cnxl).base_model == "sdxl"
    unet = _folder(tmp_path / "unet", None, {".": {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768}})
    assert kb(detect_diffusers_folder(unet)) == ("unet", "sd_1_5")
    with pytest.raises(ValueError):
        detect_diffusers_folder(tmp_path / "empty_is_not_a_model")


# ---- header parser --------------------------------------------------------------------------------------


def test_header_matches_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(5, dtype=torch.int8)}, str(path), metadata={"k": "v"})
    header = read_header(path)
    assert header.metadata == {"k": "v"}
    assert header.tensors["a"].dtype == "F32" and header.tensors["a"].shape == (2, 3)
    assert header.tensors["b"] == ("I8", (5,), header.tensors["b"].data_offsets)
    with safe_open(str(path), "pt") as fh:
        assert set(fh.keys()) == set(header.tensors)
    assert header.data_start + max(t.data_offsets[1] for t in header.tensors.values()) == path.stat().st_size
    assert parse_header_bytes(path.read_bytes()).tensors == header.tensors


GOOD = {"t": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        (b"", b"", None, "too small"),
        (GOOD, b"\0" * 4, 10_000, "larger than the file"),
        (GOOD, b"\0" * 4, 200_000_000, "exceeds"),
        (b"{not json", b"", None, "not valid JSON"),
        (b"\xff\xfe{}", b"", None, "UTF-8"),
        ([1, 2], b"", None, "must be an object"),
        ({"t": {"dtype": "F16", "shape": "2", "data_offsets": [0, 4]}}, b"\0" * 4, None, "shape"),
        ({"t": {"dtype": "F16", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, None, "shape"),
        ({"t": {"dtype": 5, "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, None, "dtype"),
        ({"t": {"dtype": "F16", "shape": [2], "data_offsets": [4, 0]}}, b"\0" * 4, None, "backwards"),
        ({"t": {"dtype": "F16", "shape": [2], "data_offsets": [0, 400]}}, b"\0" * 4, None, "truncated"),
        ({"t": [1]}, b"", None, "entry must be an object"),
        ({"__metadata__": {"a": 1}}, b"", None, "must be a string"),
        ({"__metadata__": ["a"]}, b"", None, "__metadata__"),
        (b"[" * 100_000 + b"]" * 100_000, b"", None, "JSON"),
    ],
)
def test_header_errors(tmp_path: Path, header: Any, data: bytes, length: int | None, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    if header == b"":
        path.write_bytes(b"\x01\x02")
    else:
        raw_file(path, header, data, length)
    with pytest.raises(HeaderError, match=message):
        read_header(path)
    with pytest.raises(HeaderError):
        parse_header_bytes(path.read_bytes())


def _only_header_errors(blob: bytes) -> None:
    try:
        parse_header_bytes(blob)
    except HeaderError as exc:
        assert str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_random_bytes_only_raise_header_error(blob: bytes) -> None:
    _only_header_errors(blob)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["__metadata__", "t", "dtype", "x"]) | st.text(max_size=6), _json_values, max_size=4),
       st.binary(max_size=32))
def test_random_json_headers_only_raise_header_error(doc: dict[str, Any], tail: bytes) -> None:
    body = json.dumps(doc).encode()
    _only_header_errors(struct.pack("<Q", len(body)) + body + tail)


# ---- hashes ---------------------------------------------------------------------------------------------


@pytest.fixture()
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.safetensors"
    gen = torch.Generator().manual_seed(0)
    save_file({"w": torch.randint(0, 256, (1_200_000,), dtype=torch.uint8, generator=gen)}, str(path), metadata={"ss_x": "1"})
    return path


def test_hashes_match_hashlib(big_file: Path) -> None:
    data = big_file.read_bytes()
    assert len(data) > 1_100_000
    full = hashlib.sha256(data).hexdigest()
    assert hashes.sha256_file(big_file) == full
    assert hashes.shorthash(full) == full[:10]
    assert hashes.a1111_model_hash(big_file) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    n = int.from_bytes(data[:8], "little")
    assert hashes.addnet_hash(big_file) == hashlib.sha256(data[8 + n:]).hexdigest()


def test_addnet_hash_ignores_metadata(tmp_path: Path) -> None:
    tensors = {"lora_unet_x.lora_down.weight": torch.arange(8, dtype=torch.float32).reshape(2, 4)}
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, str(a), metadata={"ss_output_name": "a"})
    save_file(tensors, str(b), metadata={"ss_output_name": "a much longer name"})
    assert hashes.addnet_hash(a) == hashes.addnet_hash(b)
    assert hashes.sha256_file(a) != hashes.sha256_file(b)
    assert hashes.a1111_model_hash(a) == hashlib.sha256(b"").hexdigest()[:8]  # < 1 MiB: A1111 hashes nothing


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = hashes.sha256_file

    def counting(path: Any) -> str:
        calls.append(str(path))
        time.sleep(0.02)  # widen the race window for the threaded test
        return real(path)

    monkeypatch.setattr(hashes, "sha256_file", counting)
    return calls


def test_hash_cache_hits_persists_and_invalidates(tmp_path: Path, big_file: Path, counted: list[str]) -> None:
    cache_file = tmp_path / "cache" / "hashes.json"
    cache = HashCache(cache_file)
    first = cache.sha256(big_file)
    assert cache.sha256(big_file) == first and len(counted) == 1
    assert HashCache(cache_file).sha256(big_file) == first and len(counted) == 1  # loaded from disk
    saved = json.loads(cache_file.read_text())
    assert saved["entries"][str(big_file.absolute())]["hashes"]["sha256"] == first
    assert [p.name for p in cache_file.parent.iterdir()] == ["hashes.json"]  # no temp files left behind

    st_ = big_file.stat()
    os.utime(big_file, ns=(st_.st_atime_ns, st_.st_mtime_ns + 5_000_000_000))
    assert cache.sha256(big_file) == first and len(counted) == 2  # same bytes, new mtime: rehashed
    with open(big_file, "ab") as fh:
        fh.write(b"x")
    os.utime(big_file, ns=(st_.st_atime_ns, st_.st_mtime_ns + 5_000_000_000))  # size alone changed
    assert cache.sha256(big_file) == hashlib.sha256(big_file.read_bytes()).hexdigest() and len(counted) == 3
    assert cache.model_hash(big_file) == hashes.a1111_model_hash(big_file)


def test_hash_cache_threads_hash_once(big_file: Path, counted: list[str]) -> None:
    cache = HashCache(None)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.sha256(big_file))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 6 and len(counted) == 1


def test_hash_cache_survives_corrupt_file(tmp_path: Path, big_file: Path) -> None:
    cache_file = tmp_path / "hashes.json"
    cache_file.write_text("{ not json")
    assert HashCache(cache_file).sha256(big_file) == hashlib.sha256(big_file.read_bytes()).hexdigest()
    assert json.loads(cache_file.read_text())["version"] == HashCache.VERSION


# ---- sidecars ---------------------------------------------------------------------------------------------


def test_sidecar_round_trip_never_touches_model(tmp_path: Path) -> None:
    model = write(tmp_path / "style.safetensors", kohya(KOHYA_ATTN, 768), {"ss_output_name": "style"})
    before, mtime = model.read_bytes(), model.stat().st_mtime_ns
    assert sidecar.sidecar_path(model) == tmp_path / "style.json"  # A1111's user-metadata file
    assert sidecar.read(model) == {}
    assert sidecar.update(model, {"description": "ink", "preferred weight": 0.8}) == {"description": "ink", "preferred weight": 0.8}
    assert sidecar.update(model, {"activation text": "inkstyle", "description": None}) == {"preferred weight": 0.8, "activation text": "inkstyle"}
    assert sidecar.read(model) == json.loads((tmp_path / "style.json").read_text())
    assert sidecar.update(model, {"notes": "x"}, replace=True) == {"notes": "x"}
    assert model.read_bytes() == before and model.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style.json", "style.safetensors"]
    assert inspect_path(model)["sidecar"] == {"notes": "x"}


def test_sidecar_refusals(tmp_path: Path, models_dir: Path) -> None:
    weird = tmp_path / "model.json"
    weird.write_text("{}")
    with pytest.raises(SidecarError, match="model file itself"):
        sidecar.update(weird, {"a": 1})
    model = write(tmp_path / "m.safetensors", {"emb_params": (1, 768)})
    (tmp_path / "m.json").symlink_to(model)
    with pytest.raises(SidecarError, match="model file itself"):
        sidecar.update(model, {"a": 1})
    (tmp_path / "m.json").unlink()
    (tmp_path / "m.json").write_text("[1, 2")
    with pytest.raises(SidecarError):
        sidecar.read(model)
    with pytest.raises(SidecarError):
        sidecar.update(model, {"a": 1})
    assert sidecar.update(model, {"a": 1}, replace=True) == {"a": 1}
    with pytest.raises(SidecarError, match="JSON"):
        sidecar.update(model, {"a": object()})
    with pytest.raises(FileNotFoundError):
        sidecar.update(tmp_path / "missing.safetensors", {"a": 1})
    folder = models_dir / "tiny-sd15"
    assert sidecar.sidecar_path(folder) == folder / "sdworker.json"


def test_folder_sidecar(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "sd2", {"_class_name": "StableDiffusionPipeline"}, {"unet": {"cross_attention_dim": 1024}})
    sidecar.update(folder, {"title": "mine"})
    assert json.loads((folder / "sdworker.json").read_text()) == {"title": "mine"}
    info = inspect_path(folder, with_hashes=True)
    assert info["sidecar"] == {"title": "mine"} and info["hashes"] is None and info["base_model"] == "sd_2"


# ---- inspect_path ----------------------------------------------------------------------------------------


def test_inspect_lora_with_metadata_and_hashes(tmp_path: Path) -> None:
    md = {
        "ss_tag_frequency": json.dumps({"dir": {"ink": 3}}),
        "ss_network_dim": "4",
        "ss_bad": "{oops",
        "ss_nan": "[NaN]",
        "modelspec.title": "Ink style",
        "modelspec.architecture": "stable-diffusion-v1/lora",
    }
    model = write(tmp_path / "ink.safetensors", kohya(KOHYA_ATTN, 768), md)
    cache = HashCache(tmp_path / "h.json")
    info = inspect_path(model, hash_cache=cache, with_hashes=True)
    assert (info["kind"], info["base_model"], info["format"], info["pickle"]) == ("lora", "sd_1_5", "safetensors", False)
    assert info["metadata"]["ss_tag_frequency"] == {"dir": {"ink": 3}}
    assert info["metadata"]["ss_network_dim"] == "4" and info["metadata"]["ss_bad"] == "{oops" and info["metadata"]["ss_nan"] == "[NaN]"
    assert info["size"] == model.stat().st_size and info["tensor_count"] == 3
    data = model.read_bytes()
    n = int.from_bytes(data[:8], "little")
    addnet = hashlib.sha256(data[8 + n:]).hexdigest()
    assert info["hashes"] == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "shorthash": hashlib.sha256(data).hexdigest()[:10],
        "model_hash": hashlib.sha256(b"").hexdigest()[:8],
        "addnet": addnet,
        "lora_shorthash": addnet[:12],
    }
    assert inspect_path(model, with_hashes=True)["hashes"] == info["hashes"]  # without a cache
    json.dumps(info, allow_nan=False)


def test_inspect_pickles_are_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lora = tmp_path / "models" / "Lora" / "thing.pt"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"\x80\x04 not a pickle we would ever load")
    vae = tmp_path / "sdxl_vae.ckpt"
    vae.write_bytes(b"junk")
    opened: list[str] = []
    real_open = open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    info = inspect_path(lora)
    assert (info["kind"], info["format"], info["pickle"], info["metadata"]) == ("lora", "ckpt", True, {})
    assert str(lora) not in opened
    info = inspect_path(vae)
    assert (info["kind"], info["base_model"], info["pickle"]) == ("vae", "sdxl", True)
    monkeypatch.undo()
    hashed = inspect_path(lora, with_hashes=True)["hashes"]  # hashing reads bytes, never unpickles
    assert hashed["lora_shorthash"] == hashlib.sha256(lora.read_bytes()).hexdigest()[:12]


def test_inspect_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        inspect_path(tmp_path / "nope.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(HeaderError):
        inspect_path(tmp_path / "broken.safetensors")
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + b"\0" * 60)  # GGUF version 0: a broken GGUF file
    with pytest.raises(HeaderError, match="not a readable GGUF file"):
        inspect_path(tmp_path / "model.gguf")
    (tmp_path / "model.onnx").write_bytes(b"\0" * 64)
    with pytest.raises(UnsupportedModelFile):
        inspect_path(tmp_path / "model.onnx")


def test_inspect_tiny_folder(models_dir: Path) -> None:
    info = inspect_path(models_dir / "tiny-sdxl")
    assert (info["kind"], info["base_model"], info["format"], info["pickle"]) == ("checkpoint", "sdxl", "diffusers", False)
    assert info["size"] > 0 and info["tensor_count"] is None


def test_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, sdworker.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
