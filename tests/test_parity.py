"""The worker's images equal plain diffusers' for the same model, settings and CPU generators."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from conftest import assert_batch_noise_per_image

PROMPT = "a small red house by a lake"


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@pytest.fixture(scope="module")
def pipes(models_dir):
    loaded = {}
    for name in ("tiny-sdxl", "tiny-sd15"):
        kwargs = {"safety_checker": None, "requires_safety_checker": False} if name == "tiny-sd15" else {}
        pipe = DiffusionPipeline.from_pretrained(str(models_dir / name), **kwargs)
        pipe.set_progress_bar_config(disable=True)
        loaded[name] = pipe
    return loaded


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-sd15"])
def test_single_image_equals_diffusers(worker, pipes, model):
    req = {"model_id": model, "prompt": PROMPT, "width": 64, "height": 96, "steps": 4, "guidance_scale": 6.5, "seed": 1234}
    r = worker.call("inference.text2img", req, timeout=180)
    assert r["success"], r
    got = _decode(r["data"]["images"][0]["base64"])
    expected = pipes[model](
        prompt=PROMPT, width=64, height=96, num_inference_steps=4, guidance_scale=6.5,
        generator=[torch.Generator("cpu").manual_seed(1234)],
    ).images[0]
    assert got.shape == (96, 64, 3)
    assert np.array_equal(got, np.asarray(expected.convert("RGB")))


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-sd15"])
def test_batch_equals_diffusers_batch(worker, pipes, model):
    req = {"model_id": model, "prompt": PROMPT, "negative_prompt": "ugly", "steps": 3, "seed": 77, "num_images": 3}
    r = worker.call("inference.text2img", req, timeout=180)
    assert r["success"], r
    images = r["data"]["images"]
    assert [im["seed"] for im in images] == [77, 78, 79]
    expected = pipes[model](
        prompt=PROMPT, negative_prompt="ugly", num_inference_steps=3, guidance_scale=7.0,
        num_images_per_prompt=3, generator=[torch.Generator("cpu").manual_seed(77 + i) for i in range(3)],
    ).images
    for im, exp in zip(images, expected):
        assert np.array_equal(_decode(im["base64"]), np.asarray(exp.convert("RGB")))


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-sd15"])
def test_batched_image_starts_from_its_one_image_noise(pipes, model):
    """Image i of a batch with seed s starts from the noise of a one-image request with seed s + i."""
    assert_batch_noise_per_image(pipes[model], pipes[model].unet.config.in_channels, 64, 4)


def test_same_seed_same_image_and_random_seed_reported(worker):
    req = {"model_id": "tiny-sd15", "prompt": "x", "steps": 2, "seed": 5}
    a = worker.call("inference.text2img", req, timeout=120)["data"]["images"][0]["base64"]
    b = worker.call("inference.text2img", req, timeout=120)["data"]["images"][0]["base64"]
    assert a == b
    r = worker.call("inference.text2img", {**req, "seed": -1}, timeout=120)["data"]
    seed = r["images"][0]["seed"]
    assert r["parameters"]["seed"] == seed and isinstance(seed, int) and seed >= 0
    again = worker.call("inference.text2img", {**req, "seed": seed}, timeout=120)["data"]["images"][0]["base64"]
    assert again == r["images"][0]["base64"]
