"""img2img and inpainting through the worker equal plain diffusers on the same components."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
from PIL import Image


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@pytest.fixture(scope="module")
def init_image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def mask_image() -> Image.Image:
    m = np.zeros((64, 64), dtype=np.uint8)
    m[16:48, 16:48] = 255
    return Image.fromarray(m)


def _base(models_dir, model):
    kwargs = {"safety_checker": None, "requires_safety_checker": False} if model == "tiny-sd15" else {}
    pipe = DiffusionPipeline.from_pretrained(str(models_dir / model), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-sd15"])
def test_img2img_and_inpainting_parity(worker, models_dir, init_image, mask_image, model):
    base = _base(models_dir, model)
    gen = lambda: [torch.Generator("cpu").manual_seed(21)]  # noqa: E731
    r = worker.call("inference.img2img", {"model_id": model, "prompt": "p", "init_image": _png_b64(init_image), "strength": 0.6, "steps": 5, "seed": 21}, timeout=180)
    assert r["success"], r
    exp = AutoPipelineForImage2Image.from_pipe(base)(prompt="p", image=init_image, strength=0.6, num_inference_steps=5, guidance_scale=7.0, generator=gen()).images[0]
    assert np.array_equal(_decode(r["data"]["images"][0]["base64"]), np.asarray(exp.convert("RGB")))
    assert r["data"]["parameters"]["mode"] == "img2img" and r["data"]["parameters"]["strength"] == 0.6

    r = worker.call("inference.inpainting", {"model_id": model, "prompt": "p", "init_image": _png_b64(init_image), "mask_image": _png_b64(mask_image), "strength": 0.9, "steps": 5, "seed": 21}, timeout=180)
    assert r["success"], r
    exp = AutoPipelineForInpainting.from_pipe(base)(prompt="p", image=init_image, mask_image=mask_image, strength=0.9, width=64, height=64, num_inference_steps=5, guidance_scale=7.0, generator=gen()).images[0]
    assert np.array_equal(_decode(r["data"]["images"][0]["base64"]), np.asarray(exp.convert("RGB")))


def test_mode_switch_reuses_the_loaded_model(worker, init_image, mask_image):
    worker.call("inference.text2img", {"model_id": "tiny-sdxl", "steps": 1}, timeout=120)
    before = worker.call("inference.get_pipeline_info", {"model_id": "tiny-sdxl"})["data"]["pipelines"][0]
    worker.call("inference.img2img", {"model_id": "tiny-sdxl", "steps": 2, "init_image": _png_b64(init_image)}, timeout=120)
    r = worker.call("inference.inpainting", {"model_id": "tiny-sdxl", "steps": 2, "init_image": _png_b64(init_image), "mask_image": _png_b64(mask_image)}, timeout=120)
    assert r["success"] and r["data"]["performance"]["loaded_from"] == "cache"
    after = worker.call("inference.get_pipeline_info", {"model_id": "tiny-sdxl"})["data"]["pipelines"][0]
    assert after["load_ms"] == before["load_ms"] and {"img2img", "inpainting"} <= set(after["modes"])


def test_mode_validation(worker, init_image, mask_image):
    r = worker.call("inference.img2img", {"model_id": "tiny-sdxl"})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.init_image"
    r = worker.call("inference.img2img", {"model_id": "tiny-sdxl", "init_image": "!!!notbase64!!!", "strength": 0.5})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.init_image"
    r = worker.call("inference.img2img", {"model_id": "tiny-sdxl", "init_image": _png_b64(init_image), "strength": 2})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.strength"
    small = mask_image.resize((32, 32))
    r = worker.call("inference.inpainting", {"model_id": "tiny-sdxl", "init_image": _png_b64(init_image), "mask_image": _png_b64(small)})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.mask_image"
    r = worker.call("inference.img2img", {"model_id": "tiny-sdxl", "init_image": "../../etc/passwd.png"})
    assert r["error_code"] == "unsafe_path"
