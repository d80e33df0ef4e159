"""Flux beyond text2img/img2img, through the real worker and against plain diffusers with the same
components, settings and CPU generators: inpainting (FluxInpaintPipeline, and FluxFillPipeline on a
Fill model), LoRAs (diffusers/PEFT and kohya layouts, request and prompt tags), ControlNets (one,
several, img2img), the base checks between SD and Flux adapters, and single-file detection."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForInpainting,
    DiffusionPipeline,
    FluxControlNetImg2ImgPipeline,
    FluxControlNetInpaintPipeline,
    FluxControlNetModel,
    FluxControlNetPipeline,
    FluxFillPipeline,
    FluxInpaintPipeline,
    FluxMultiControlNetModel,
)
from PIL import Image
from safetensors.torch import save_file

from conftest import Worker, png_b64 as _png_b64
from sdworker.models.detect import detect_file
from sdworker.tiny import make_tiny_model
from sdworker.tiny.adapters import make_tiny_kohya_lora
from sdworker.families.flux.tiny import make_tiny_flux_controlnet, make_tiny_flux_lora

PROMPT = "a photo of a small red house by a lake"
DEV, FILL, SD = "tiny-flux-dev", "tiny-flux-fill", "tiny-sd15"
BASE = {"model_id": DEV, "prompt": PROMPT, "width": 64, "height": 64, "steps": 2, "guidance_scale": 3.5, "seed": 11}


def _pixels(r: dict) -> np.ndarray:
    assert r["success"], r
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r["data"]["images"][0]["base64"]))).convert("RGB"))


def _rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def _gen(seed: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("flux-adapters")
    make_tiny_model("flux-dev", r / DEV)
    make_tiny_model("flux-fill", r / FILL)
    make_tiny_model("sd15", r / SD)
    make_tiny_flux_lora(r / "lora" / "flux-peft.safetensors", "peft", seed=1)
    make_tiny_flux_lora(r / "lora" / "flux-kohya.safetensors", "kohya", seed=2)
    make_tiny_kohya_lora("sd15", r / "lora" / "sd-style.safetensors", seed=3)
    make_tiny_flux_controlnet(r / "controlnet" / "flux-cn-a", seed=4)
    make_tiny_flux_controlnet(r / "controlnet" / "flux-cn-b", seed=5)
    return r


@pytest.fixture(scope="module")
def fw(root: Path, tmp_path_factory: pytest.TempPathFactory):
    w = Worker(["--models-dir", str(root), "--output-dir", str(tmp_path_factory.mktemp("flux-adapters-out"))])
    yield w
    w.kill()


def _plain(root: Path, name: str):
    pipe = DiffusionPipeline.from_pretrained(str(root / name), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def dev(root: Path):
    return _plain(root, DEV)


@pytest.fixture(scope="module")
def images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(7)
    init = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # white: repaint
    control = Image.new("RGB", (64, 64), "black")
    control.paste((255, 255, 255), (8, 24, 56, 40))
    control2 = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return {"init": init, "mask": mask, "control": control, "control2": control2}


# ---- inpainting ------------------------------------------------------------------------------------


def test_inpainting_equals_flux_inpaint_pipeline(fw, dev, images):
    req = {**BASE, "init_image": _png_b64(images["init"]), "mask_image": _png_b64(images["mask"]), "strength": 0.7, "steps": 4}
    r = fw.call("inference.inpainting", req, timeout=180)
    got = _pixels(r)
    assert r["data"]["parameters"]["strength"] == 0.7 and r["data"]["parameters"]["mode"] == "inpainting"
    pipe = AutoPipelineForInpainting.from_pipe(dev)
    assert type(pipe) is FluxInpaintPipeline
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        prompt=PROMPT, image=images["init"], mask_image=images["mask"], strength=0.7, width=64, height=64,
        num_inference_steps=4, guidance_scale=3.5, generator=_gen(11),
    ).images[0]
    assert np.array_equal(got, _rgb(want))
    outside = np.asarray(images["mask"]) == 0
    text2img = _pixels(fw.call("inference.text2img", BASE, timeout=180))
    assert not np.array_equal(got[outside], text2img[outside])  # the unmasked part follows the init image


def test_fill_model_inpaints_with_its_defaults(fw, root, images):
    req = {"model_id": FILL, "prompt": PROMPT, "init_image": _png_b64(images["init"]), "mask_image": _png_b64(images["mask"]), "steps": 2, "seed": 5}
    r = fw.call("inference.inpainting", req, timeout=180)
    got = _pixels(r)
    params = r["data"]["parameters"]
    assert params["base_model"] == "flux_dev" and (params["guidance_scale"], params["strength"]) == (30.0, 1.0), params
    fill = _plain(root, FILL)
    assert type(fill) is FluxFillPipeline
    want = fill(prompt=PROMPT, image=images["init"], mask_image=images["mask"], width=64, height=64, num_inference_steps=2, generator=_gen(5)).images[0]
    assert np.array_equal(got, _rgb(want))


def test_fill_model_refuses_other_modes_and_true_cfg(fw, images):
    r = fw.call("inference.text2img", {**BASE, "model_id": FILL})
    assert r["error_code"] == "validation_error" and "Fill" in r["error"] and "inpainting only" in r["error"], r
    assert r["error_details"][0]["path"] == "data.model_id", r
    req = {"model_id": FILL, "prompt": PROMPT, "init_image": _png_b64(images["init"]), "mask_image": _png_b64(images["mask"]),
           "steps": 1, "seed": 5, "negative_prompt": "blurry", "true_cfg_scale": 2.0}
    r = fw.call("inference.inpainting", req, timeout=180)
    assert r["success"], r
    assert any("FluxFillPipeline has no true CFG" in w for w in r["data"]["warnings"]), r["data"]["warnings"]
    assert r["data"]["parameters"]["true_cfg_scale"] == 1.0


def test_fill_model_keeps_its_steps_and_guidance_under_a_preset(fw, images):
    """The presets of a Fill model are flux_dev's (guidance 3.5): they set neither its steps nor its guidance,
    their other values still apply, and what the request sets wins over both."""
    req = {"model_id": FILL, "prompt": PROMPT, "init_image": _png_b64(images["init"]), "mask_image": _png_b64(images["mask"]),
           "width": 64, "height": 64, "seed": 5}
    for preset in ("quality", "speed"):
        v = fw.call("inference.validate_request", {"method": "inference.inpainting", "request": {**req, "preset": preset}})
        assert v["success"] and v["data"]["valid"], v
        n = v["data"]["normalized"]
        assert (n["steps"], n["guidance_scale"], n["strength"], n["max_sequence_length"]) == (50, 30.0, 1.0, 512), n
    r = fw.call("inference.inpainting", {**req, "preset": "speed", "steps": 2}, timeout=180)
    got = _pixels(r)
    params = r["data"]["parameters"]
    assert (params["steps"], params["guidance_scale"], params["strength"]) == (2, 30.0, 1.0), params
    assert params["preset_origin"] == "builtin" and params["preset_base_model"] == "flux_dev"
    assert params["preset_skipped"] == {"guidance_scale": 3.5} and "guidance_scale" not in params["preset_applied"], params
    assert params["preset_applied"]["max_sequence_length"] == 512 and params["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert any("keeps its own guidance_scale 30" in w for w in r["data"]["warnings"]), r["data"]["warnings"]
    assert np.array_equal(got, _pixels(fw.call("inference.inpainting", {**req, "steps": 2}, timeout=180)))  # as without a preset


def test_batch_process_runs_flux_inpainting_and_fill_items_in_batched_calls(fw, root, dev, images):
    """Inpainting items on a regular Flux model share one FluxInpaintPipeline call, and on a Fill model one
    FluxFillPipeline call (prompt, init image, mask and generator lists): each equal to plain diffusers'
    call with the same lists."""
    inits = [images["init"], images["control2"]]
    masks = [images["mask"], images["mask"].transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(90)]
    prompts, seeds = ["a red house", "a blue boat on a lake"], [31, 32]

    def items(model: str, **extra) -> list[dict]:
        return [
            {"model_id": model, "type": "inpainting", "prompt": p, "seed": s, "init_image": _png_b64(im), "mask_image": _png_b64(m),
             "width": 64, "height": 64, "steps": 2, **extra}
            for p, s, im, m in zip(prompts, seeds, inits, masks)
        ]

    reqs = items(DEV, strength=0.7, guidance_scale=3.5) + items(FILL)
    r = fw.call("inference.batch_process", {"requests": reqs, "batch_config": {"batch_size": 4, "enable_dynamic_sizing": False}}, timeout=300)
    assert r["success"], r
    got, perf = r["data"]["items"], r["data"]["performance"]
    assert all(it["success"] for it in got), got
    assert (perf["groups"], perf["pipeline_calls"], perf["batch_sizes"]) == (2, 2, [2, 2])
    assert [it["parameters"]["batch_group"] for it in got] == [0, 0, 1, 1] and not any(it["parameters"]["batch_alone"] for it in got)
    assert [it["parameters"]["strength"] for it in got] == [0.7, 0.7, 1.0, 1.0] and got[2]["parameters"]["guidance_scale"] == 30.0
    inpaint = AutoPipelineForInpainting.from_pipe(dev)
    assert type(inpaint) is FluxInpaintPipeline
    inpaint.set_progress_bar_config(disable=True)
    fill = _plain(root, FILL)
    assert type(fill) is FluxFillPipeline
    gens = lambda: [torch.Generator("cpu").manual_seed(s) for s in seeds]  # noqa: E731
    common = {"prompt": prompts, "image": inits, "mask_image": masks, "width": 64, "height": 64, "num_inference_steps": 2, "max_sequence_length": 512}
    want = inpaint(**common, strength=0.7, guidance_scale=3.5, generator=gens()).images + fill(**common, generator=gens()).images
    for it, exp in zip(got, want):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(it["images"][0]["base64"]))).convert("RGB")), _rgb(exp))


# ---- LoRAs -------------------------------------------------------------------------------------------


def _with_loras(root: Path, loras: dict[str, float]):
    pipe = _plain(root, DEV)
    for name in loras:
        pipe.load_lora_weights(str(root / "lora"), weight_name=f"{name}.safetensors", adapter_name=name)
    pipe.set_adapters(list(loras), adapter_weights=list(loras.values()))
    return pipe


@pytest.mark.parametrize("name", ["flux-peft", "flux-kohya"])
def test_lora_equals_plain_diffusers(fw, root, name):
    got = _pixels(fw.call("inference.text2img", {**BASE, "loras": [{"name": f"lora/{name}", "weight": 0.8}]}, timeout=180))
    want = _with_loras(root, {name: 0.8})(prompt=PROMPT, width=64, height=64, num_inference_steps=2, guidance_scale=3.5, generator=_gen(11)).images[0]
    assert np.array_equal(got, _rgb(want))
    assert not np.array_equal(got, _pixels(fw.call("inference.text2img", BASE, timeout=180)))  # the LoRA does something
    tagged = _pixels(fw.call("inference.text2img", {**BASE, "prompt": f"{PROMPT} <lora:{name}:0.8>"}, timeout=180))
    assert np.array_equal(tagged, got)


def test_two_loras_and_the_resting_state(fw, root, dev):
    both = {"flux-peft": 0.6, "flux-kohya": 0.5}
    r = fw.call("inference.text2img", {**BASE, "loras": [{"name": f"lora/{n}", "weight": w} for n, w in both.items()]}, timeout=180)
    got = _pixels(r)
    assert [entry["model_id"] for entry in r["data"]["parameters"]["loras"]] == ["lora/flux-peft", "lora/flux-kohya"]
    want = _with_loras(root, both)(prompt=PROMPT, width=64, height=64, num_inference_steps=2, guidance_scale=3.5, generator=_gen(11)).images[0]
    assert np.array_equal(got, _rgb(want))
    base = _pixels(fw.call("inference.text2img", BASE, timeout=180))  # the shared transformer rests without LoRA
    plain = dev(prompt=PROMPT, width=64, height=64, num_inference_steps=2, guidance_scale=3.5, generator=_gen(11)).images[0]
    assert np.array_equal(base, _rgb(plain)) and not np.array_equal(base, got)


def test_lora_bases_must_match(fw):
    r = fw.call("inference.text2img", {**BASE, "loras": [{"name": "lora/sd-style", "weight": 1}]})
    assert r["error_code"] == "validation_error" and "sd_1_5" in r["error"] and "flux_dev" in r["error"], r
    r = fw.call("inference.text2img", {"model_id": SD, "prompt": "x", "steps": 1, "width": 64, "height": 64, "loras": [{"name": "lora/flux-peft", "weight": 1}]})
    assert r["error_code"] == "validation_error" and "Flux" in r["error"] and "sd_1_5" in r["error"], r


# ---- ControlNets ----------------------------------------------------------------------------------------


def _cn(root: Path, name: str) -> FluxControlNetModel:
    return FluxControlNetModel.from_pretrained(str(root / "controlnet" / name), local_files_only=True)


def test_controlnet_equals_plain_diffusers(fw, root, dev, images):
    spec = {"model": "controlnet/flux-cn-a", "image": _png_b64(images["control"]), "conditioning_scale": 0.8, "start": 0.0, "end": 0.5}
    r = fw.call("inference.text2img", {**BASE, "steps": 4, "controlnets": [spec]}, timeout=180)
    got = _pixels(r)
    assert r["data"]["parameters"]["controlnets"][0]["model"] == "controlnet/flux-cn-a"
    pipe = FluxControlNetPipeline.from_pipe(dev, controlnet=_cn(root, "flux-cn-a"))
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        prompt=PROMPT, control_image=images["control"], controlnet_conditioning_scale=0.8, control_guidance_start=0.0,
        control_guidance_end=0.5, width=64, height=64, num_inference_steps=4, guidance_scale=3.5, generator=_gen(11),
    ).images[0]
    assert np.array_equal(got, _rgb(want))
    assert not np.array_equal(got, _pixels(fw.call("inference.text2img", {**BASE, "steps": 4}, timeout=180)))


def test_multi_controlnet_equals_plain_diffusers(fw, root, dev, images):
    specs = [
        {"model": "controlnet/flux-cn-a", "image": _png_b64(images["control"]), "conditioning_scale": 0.7},
        {"model": "controlnet/flux-cn-b", "image": _png_b64(images["control2"]), "conditioning_scale": 0.4, "start": 0.5},
    ]
    got = _pixels(fw.call("inference.text2img", {**BASE, "controlnets": specs}, timeout=180))
    multi = FluxMultiControlNetModel([_cn(root, "flux-cn-a"), _cn(root, "flux-cn-b")])
    pipe = FluxControlNetPipeline.from_pipe(dev, controlnet=multi)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        prompt=PROMPT, control_image=[images["control"], images["control2"]], controlnet_conditioning_scale=[0.7, 0.4],
        control_guidance_start=[0.0, 0.5], control_guidance_end=[1.0, 1.0], width=64, height=64, num_inference_steps=2,
        guidance_scale=3.5, generator=_gen(11),
    ).images[0]
    assert np.array_equal(got, _rgb(want))


def test_controlnet_img2img_equals_plain_diffusers(fw, root, dev, images):
    spec = {"model": "controlnet/flux-cn-a", "image": _png_b64(images["control"])}
    req = {**BASE, "init_image": _png_b64(images["init"]), "strength": 0.6, "steps": 4, "controlnets": [spec]}
    got = _pixels(fw.call("inference.img2img", req, timeout=180))
    pipe = FluxControlNetImg2ImgPipeline.from_pipe(dev, controlnet=_cn(root, "flux-cn-a"))
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        prompt=PROMPT, image=images["init"], control_image=images["control"], strength=0.6, controlnet_conditioning_scale=1.0,
        control_guidance_start=0.0, control_guidance_end=1.0, width=64, height=64, num_inference_steps=4, guidance_scale=3.5,
        generator=_gen(11),
    ).images[0]
    assert np.array_equal(got, _rgb(want))


def test_controlnet_inpainting_with_a_lora_equals_plain_diffusers(fw, root, images):
    spec = {"model": "controlnet/flux-cn-b", "image": _png_b64(images["control"]), "conditioning_scale": 0.9}
    req = {**BASE, "init_image": _png_b64(images["init"]), "mask_image": _png_b64(images["mask"]), "strength": 0.8, "steps": 3,
           "controlnets": [spec], "loras": [{"name": "lora/flux-kohya", "weight": 0.7}]}
    got = _pixels(fw.call("inference.inpainting", req, timeout=180))
    pipe = FluxControlNetInpaintPipeline.from_pipe(_with_loras(root, {"flux-kohya": 0.7}), controlnet=_cn(root, "flux-cn-b"))
    pipe.set_progress_bar_config(disable=True)
    want = pipe(
        prompt=PROMPT, image=images["init"], mask_image=images["mask"], control_image=images["control"], strength=0.8,
        controlnet_conditioning_scale=0.9, control_guidance_start=0.0, control_guidance_end=1.0, width=64, height=64,
        num_inference_steps=3, guidance_scale=3.5, generator=_gen(11),
    ).images[0]
    assert np.array_equal(got, _rgb(want))


def test_controlnet_fit_is_checked(fw, root, images):
    from sdworker.tiny.controlnet import make_tiny_controlnet

    make_tiny_controlnet("sd15", root / "controlnet" / "sd-cn")
    fw.call("model.list_models", {"refresh": True})
    r = fw.call("inference.text2img", {**BASE, "controlnets": [{"model": "controlnet/sd-cn", "image": _png_b64(images["control"])}]})
    assert r["error_code"] == "validation_error" and "Flux" in r["error"], r
    r = fw.call("inference.text2img", {"model_id": SD, "prompt": "x", "steps": 1, "width": 64, "height": 64,
                                       "controlnets": [{"model": "controlnet/flux-cn-a", "image": _png_b64(images["control"])}]})
    assert r["error_code"] == "validation_error" and "Flux ControlNet" in r["error"], r
    req = {"model_id": FILL, "prompt": "x", "steps": 1, "init_image": _png_b64(images["init"]), "mask_image": _png_b64(images["mask"]),
           "controlnets": [{"model": "controlnet/flux-cn-a", "image": _png_b64(images["control"])}]}
    r = fw.call("inference.inpainting", req)
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.controlnets", r


def test_flux_controlnet_fit_needs_the_same_width_and_guidance(root):
    import json

    from sdworker.managers import controlnet as cnm
    from sdworker.families.flux.tiny import TRANSFORMERS

    cn = json.loads((root / "controlnet" / "flux-cn-a" / "config.json").read_text())
    assert cnm.family_of_config(cn) == "flux"
    assert cnm.mismatch(cn, dict(TRANSFORMERS["flux-dev"])) is None
    why = cnm.mismatch(cn, dict(TRANSFORMERS["flux-schnell"]))  # diffusers would hand schnell a guidance it cannot embed
    assert why is not None and "guidance_embeds" in why and "transformer" in why
    assert "joint_attention_dim" in cnm.mismatch(cn, {**TRANSFORMERS["flux-dev"], "joint_attention_dim": 4096})


# ---- single-file detection ---------------------------------------------------------------------------------


def _write(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path), metadata=metadata)
    return path


_BFL = {
    "img_in.weight": (8, 64), "txt_in.weight": (8, 16), "time_in.in_layer.weight": (8, 4), "vector_in.in_layer.weight": (8, 4),
    "double_blocks.0.img_attn.qkv.weight": (24, 8), "single_blocks.0.linear1.weight": (56, 8), "final_layer.linear.weight": (64, 8),
}


@pytest.mark.parametrize(
    "name, shapes, metadata, kind, base, extra",
    [
        ("flux1-model.safetensors", {**_BFL, "guidance_in.in_layer.weight": (8, 4)}, None, "unet", "flux_dev", {"variant": "dev"}),
        ("flux1-model.safetensors", _BFL, None, "unet", "flux_schnell", {"variant": "schnell"}),
        ("some-model.safetensors", {**_BFL, "img_in.weight": (8, 384), "guidance_in.in_layer.weight": (8, 4)}, None, "unet", "flux_dev", {"variant": "fill"}),
        ("flux1-krea-dev.safetensors", {**_BFL, "guidance_in.in_layer.weight": (8, 4)}, None, "unet", "flux_krea", {}),
        ("ckpt.safetensors", {**{f"model.diffusion_model.{k}": s for k, s in _BFL.items()}, "vae.decoder.conv_in.weight": (8, 16, 3, 3),
                              "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (10, 8)}, None, "checkpoint", "flux_schnell", {}),
        ("diffusers-transformer.safetensors", {"x_embedder.weight": (8, 64), "transformer_blocks.0.attn.to_q.weight": (8, 8),
                                               "single_transformer_blocks.0.proj_mlp.weight": (32, 8),
                                               "time_text_embed.guidance_embedder.linear_1.weight": (8, 4)}, None, "unet", "flux_dev", {"layout": "diffusers"}),
        ("style.safetensors", {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 3072),
                               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (9216, 4)}, None, "lora", "flux", {"lora_format": "kohya"}),
        ("dev-style.safetensors", {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 3072),
                                   "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (9216, 4),
                                   "lora_unet_guidance_in_in_layer.lora_down.weight": (4, 256),
                                   "lora_unet_guidance_in_in_layer.lora_up.weight": (3072, 4)}, None, "lora", "flux_dev", {"lora_format": "kohya"}),
        ("schnell-style.safetensors", {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 3072),
                                       "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (9216, 4)},
         {"modelspec.architecture": "flux-1-schnell/lora"}, "lora", "flux_schnell", {"lora_format": "kohya"}),
        ("style.safetensors", {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072),
                               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": (3072, 4)},
         {"modelspec.architecture": "flux-1-dev/lora"}, "lora", "flux_dev", {"lora_format": "peft"}),
    ],
)
def test_single_file_flux_detection(tmp_path, name, shapes, metadata, kind, base, extra):
    found = detect_file(_write(tmp_path / name, shapes, metadata))
    assert (found.kind, found.base_model) == (kind, base), found
    for key, value in extra.items():
        assert found.details.get(key) == value, found.details


def test_tiny_flux_files_are_detected(root):
    assert detect_file(root / "lora" / "flux-kohya.safetensors").base_model == "flux"
    assert detect_file(root / "lora" / "flux-peft.safetensors").base_model == "flux"
    assert (detect_file(root / FILL).kind, detect_file(root / FILL).base_model) == ("checkpoint", "flux_dev")
    cn = detect_file(root / "controlnet" / "flux-cn-a")
    assert (cn.kind, cn.base_model) == ("controlnet", "flux")
