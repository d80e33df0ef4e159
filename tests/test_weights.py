"""Weight formats of the denoiser (precision.storage_dtype / quantization / cpu_offload "group").

fp8 storage and torchao's int8 weight-only run on the CPU, so they are checked for real: the
worker's image equals plain diffusers with the same casting / quantization, the cache holds that
UNet under its own key and counts its smaller bytes. bitsandbytes and group offload need a CUDA
device: their refusals are checked here, their runs in test_gpu.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from conftest import Worker, decode_png as _decode
from sdworker.managers import weights
from sdworker.schemas.generation import PrecisionOptions

BASE = {"model_id": "tiny-sd15", "prompt": "a red barn in snow", "width": 64, "height": 64, "steps": 3, "guidance_scale": 5.0, "seed": 12}


# ---- the mapping -----------------------------------------------------------------------------------


def test_weights_of_and_problems():
    assert weights.weights_of(PrecisionOptions()) == "full"
    assert weights.weights_of(PrecisionOptions(storage_dtype="fp8_e4m3fn")) == "fp8_e4m3fn"
    assert weights.weights_of(PrecisionOptions(quantization="bnb_nf4")) == "bnb_nf4"
    both = weights.problems(PrecisionOptions(storage_dtype="fp8_e5m2", quantization="torchao_int8wo"), "cpu", "diffusers")
    assert both[0]["path"] == "precision.storage_dtype" and "not both" in both[0]["message"]
    single = weights.problems(PrecisionOptions(storage_dtype="fp8_e4m3fn"), "cpu", "single_file")
    assert single and "diffusers folder" in single[0]["message"]
    assert weights.problems(PrecisionOptions(storage_dtype="fp8_e4m3fn"), "cpu", "diffusers") == []


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_missing_quantization_package_is_named():
    found = weights.problems(PrecisionOptions(quantization="bnb_nf4"), "cuda:0", "diffusers")
    assert found == [{"path": "precision.quantization", "message": found[0]["message"]}]
    assert "bitsandbytes" in found[0]["message"] and "pip install bitsandbytes" in found[0]["message"]


def test_apply_fp8_storage_keeps_fp8_weights():
    layer = SimpleNamespace(calls=[])
    layer.enable_layerwise_casting = lambda **kw: layer.calls.append(kw)
    weights.apply(layer, "fp8_e5m2", torch, torch.float32)
    assert layer.calls == [{"storage_dtype": torch.float8_e5m2, "compute_dtype": torch.float32}]
    weights.apply(layer, "full", torch, torch.float32)
    assert len(layer.calls) == 1


# ---- through the worker ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("weights-out")
    worker = Worker(["--models-dir", str(models_dir), "--output-dir", str(out)])
    yield worker
    worker.close()


def test_fp8_storage_equals_diffusers_layerwise_casting_and_is_cached_apart(w, models_dir):
    full = w.call("inference.text2img", BASE, timeout=180)
    assert full["success"], full
    r = w.call("inference.text2img", {**BASE, "precision": {"storage_dtype": "fp8_e4m3fn"}}, timeout=180)
    assert r["success"], r
    assert r["data"]["parameters"]["precision"]["storage_dtype"] == "fp8_e4m3fn"

    pipe = DiffusionPipeline.from_pretrained(str(models_dir / "tiny-sd15"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    expected = pipe(
        BASE["prompt"], width=64, height=64, num_inference_steps=3, guidance_scale=5.0,
        generator=[torch.Generator("cpu").manual_seed(12)],
    ).images[0]
    got = _decode(r["data"]["images"][0]["base64"])
    assert np.array_equal(got, np.asarray(expected.convert("RGB")))
    assert not np.array_equal(got, _decode(full["data"]["images"][0]["base64"]))  # fp8 weights do change the result

    entries = [e for e in w.call("model.get_cache_status")["data"]["entries"] if e["component"] == "unet" and "tiny-sd15" in e["model_ids"]]
    by_dtype = {e["dtype"]: e for e in entries}
    assert set(by_dtype) == {"fp32", "fp32:fp8_e4m3fn"}
    # the UNet's linear and conv weights are stored in one byte instead of four (norms stay fp32)
    assert by_dtype["fp32:fp8_e4m3fn"]["bytes"] < 0.5 * by_dtype["fp32"]["bytes"]

    again = w.call("inference.text2img", {**BASE, "precision": {"storage_dtype": "fp8_e4m3fn"}}, timeout=180)
    assert again["data"]["performance"]["load_ms"] < 1000 and np.array_equal(_decode(again["data"]["images"][0]["base64"]), got)


def test_torchao_int8_weight_only_equals_diffusers_and_is_smaller(w, models_dir):
    """torchao's int8 weight-only runs on a CPU too: the same quantized UNet as diffusers loads, at a quarter of the bytes."""
    pytest.importorskip("torchao")
    from diffusers import TorchAoConfig, UNet2DConditionModel
    from torchao.quantization import Int8WeightOnlyConfig

    assert w.call("model.load_unet", {"model_id": "tiny-sd15", "device": "ram"})["success"]  # the full-precision twin, to compare sizes
    r = w.call("inference.text2img", {**BASE, "precision": {"quantization": "torchao_int8wo"}}, timeout=180)
    assert r["success"], r
    unet = UNet2DConditionModel.from_pretrained(str(models_dir / "tiny-sd15"), subfolder="unet", torch_dtype=torch.float32,
                                                quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    pipe = DiffusionPipeline.from_pretrained(str(models_dir / "tiny-sd15"), unet=unet, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(BASE["prompt"], width=64, height=64, num_inference_steps=3, guidance_scale=5.0,
                    generator=[torch.Generator("cpu").manual_seed(12)]).images[0]
    assert np.array_equal(_decode(r["data"]["images"][0]["base64"]), np.asarray(expected.convert("RGB")))
    entries = [e for e in w.call("model.get_cache_status", {})["data"]["entries"] if e["component"] == "unet"]
    by_dtype = {e["dtype"]: e["bytes"] for e in entries}
    # each Linear weight goes from 4 bytes to 1, plus one fp32 scale per output row; convs and norms stay fp32
    full = UNet2DConditionModel.from_pretrained(str(models_dir / "tiny-sd15"), subfolder="unet")
    saved = sum(3 * m.weight.numel() - 4 * m.weight.shape[0] for m in full.modules() if isinstance(m, torch.nn.Linear))
    assert abs(by_dtype["fp32"] - by_dtype["fp32:torchao_int8wo"] - saved) < 0.01 * saved, (by_dtype, saved)


def test_refusals_on_this_machine(w):
    r = w.call("inference.text2img", {**BASE, "precision": {"cpu_offload": "group"}})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.precision.cpu_offload"
    r = w.call("inference.text2img", {**BASE, "precision": {"storage_dtype": "fp8_e4m3fn", "quantization": "bnb_int8"}})
    assert r["error_code"] == "validation_error" and "not both" in r["error"]
    r = w.call("inference.text2img", {**BASE, "precision": {"quantization": "fp4_magic"}})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.precision.quantization"
