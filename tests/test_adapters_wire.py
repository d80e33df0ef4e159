"""LoRAs through the real worker: equal to plain diffusers with the same LoRA and weights, weight 0
and no LoRA equal the base, prompt tags and the nested C# shape give the same image, a wrong-base
LoRA is a clear error, and switching sets never reloads the base model."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import Worker
from sdworker.tiny.adapters import make_tiny_kohya_lora

REQ = {"model_id": "tiny-sd15", "prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 9}


@pytest.fixture(scope="module")
def lib(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora-lib")
    for name in ("tiny-sd15", "tiny-sdxl"):
        shutil.copytree(models_dir / name, root / name)  # a symlink out of the root would be refused
    make_tiny_kohya_lora("sd15", root / "lora" / "style.safetensors", seed=3)
    make_tiny_kohya_lora("sd15", root / "lora" / "other.safetensors", seed=4)
    return root


@pytest.fixture(scope="module")
def lw(lib: Path, tmp_path_factory: pytest.TempPathFactory):
    w = Worker(["--models-dir", str(lib), "--output-dir", str(tmp_path_factory.mktemp("lora-out"))])
    yield w
    w.close()


def _pixels(r: dict) -> np.ndarray:
    from PIL import Image

    assert r["success"], r
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r["data"]["images"][0]["base64"]))).convert("RGB"))


def _gen(w: Worker, **extra: object) -> np.ndarray:
    return _pixels(w.call("inference.text2img", {**REQ, **extra}, timeout=180))


def test_lora_equals_plain_diffusers(lw: Worker, lib: Path):
    from diffusers import DiffusionPipeline

    got = _gen(lw, loras=[{"name": "lora/style", "weight": 0.7}])
    pipe = DiffusionPipeline.from_pretrained(str(lib / "tiny-sd15"), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lib / "lora"), weight_name="style.safetensors", adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[0.7])
    want = pipe(prompt="a red cube", num_inference_steps=2, width=64, height=64, guidance_scale=7.0, generator=[torch.Generator("cpu").manual_seed(9)]).images[0]
    assert np.array_equal(got, np.asarray(want.convert("RGB")))


def test_weight_zero_and_none_equal_the_base_and_sets_switch_without_reload(lw: Worker):
    base = _gen(lw)
    lora = _gen(lw, loras=[{"name": "lora/style", "weight": 0.7}])
    assert not np.array_equal(base, lora)
    assert np.array_equal(_gen(lw, loras=[{"name": "lora/style", "weight": 0.0}]), base)
    assert np.array_equal(_gen(lw), base)  # the shared UNet rests without LoRA after a LoRA run
    r = lw.call("inference.text2img", {**REQ, "loras": [{"name": "lora/other", "weight": 0.5}]}, timeout=180)
    assert r["success"] and r["data"]["performance"]["loaded_from"] == "cache", r  # no base reload
    tag = _gen(lw, prompt="a red cube <lora:style:0.7>")
    nested = _pixels(lw.call("inference.text2img", {**REQ, "Conditioning": {"LoRAs": [{"ModelPath": "lora/style", "Weight": 0.7}]}}, timeout=180))
    assert np.array_equal(tag, lora) and np.array_equal(nested, lora)


def test_wrong_base_and_missing_lora_are_clear_errors(lw: Worker):
    r = lw.call("inference.text2img", {**REQ, "model_id": "tiny-sdxl", "loras": [{"name": "lora/style", "weight": 1}]})
    assert r["error_code"] == "validation_error" and "sd_1_5" in r["error"] and "sdxl" in r["error"], r
    r = lw.call("inference.text2img", {**REQ, "loras": [{"name": "lora/nope", "weight": 1}]})
    assert r["error_code"] == "model_not_found", r
