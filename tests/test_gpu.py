"""GPU checks: run on a lent CUDA machine (`pytest -m gpu`); skipped without CUDA."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_cuda_generation_matches_diffusers(spawn, models_dir, dtype):
    import torch
    from diffusers import DiffusionPipeline

    w = spawn("--device", "cuda", "--dtype", dtype)
    req = {"model_id": "tiny-sdxl", "prompt": "gpu", "steps": 4, "seed": 11, "num_images": 2}
    r = w.call("inference.text2img", req, timeout=180)
    assert r["success"], r
    assert r["data"]["parameters"]["device"] == "cuda:0"
    assert r["data"]["performance"]["peak_vram_mb"] > 0
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(str(models_dir / "tiny-sdxl"), dtype=torch_dtype).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt="gpu", num_inference_steps=4, guidance_scale=7.0, num_images_per_prompt=2,
                    generator=[torch.Generator("cpu").manual_seed(11 + i) for i in range(2)]).images
    for im, exp in zip(r["data"]["images"], expected):
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(im["base64"]))).convert("RGB")).astype(int)
        assert np.abs(got - np.asarray(exp.convert("RGB")).astype(int)).max() <= 1


def test_cuda_cancel_and_capabilities(spawn):
    w = spawn("--device", "cuda")
    caps = w.call("inference.get_capabilities")["data"]
    assert any(d["device_id"] == "cuda:0" and d["memory_total_mb"] > 0 for d in caps["devices"])
    w.send({"type": "inference.text2img", "request_id": "g1", "data": {"model_id": "tiny-sdxl", "steps": 150, "width": 512, "height": 512}})
    w.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "g1", timeout=120)
    w.call("inference.cancel_session", {"session_id": "g1"})
    assert w.response("g1", timeout=60)["error_code"] == "cancelled"


@pytest.mark.parametrize("opts", [{"cpu_offload": "group"}, {"storage_dtype": "fp8_e4m3fn"}, {"cpu_offload": "group", "storage_dtype": "fp8_e5m2"}])
def test_cuda_weight_formats_and_group_offload_run(spawn, opts):
    """Group offload and fp8 storage on CUDA: the run succeeds, the result says what ran, and the
    next plain request (same cached components, hooks removed) still runs on the GPU."""
    w = spawn("--device", "cuda", "--dtype", "bf16")
    req = {"model_id": "tiny-sdxl", "prompt": "gpu", "steps": 3, "seed": 5, "width": 64, "height": 64}
    r = w.call("inference.text2img", {**req, "precision": opts}, timeout=180)
    assert r["success"], r
    for k, v in opts.items():
        assert r["data"]["parameters"]["precision"][k] == v
    plain = w.call("inference.text2img", req, timeout=180)
    assert plain["success"], plain
    assert plain["data"]["performance"]["peak_vram_mb"] > 0


def test_cuda_bnb_nf4_when_installed(spawn):
    pytest.importorskip("bitsandbytes")
    w = spawn("--device", "cuda", "--dtype", "bf16")
    r = w.call("inference.text2img", {"model_id": "tiny-sdxl", "prompt": "gpu", "steps": 3, "seed": 5, "width": 64, "height": 64,
                                      "precision": {"quantization": "bnb_nf4"}}, timeout=180)
    assert r["success"], r
    entries = [e for e in w.call("model.get_cache_status")["data"]["entries"] if e["component"] == "unet"]
    assert any(e["dtype"].endswith(":bnb_nf4") for e in entries)


def test_cuda_gguf_transformer_file_runs(tmp_path):
    """A Q8_0 GGUF Flux transformer with its companion folder on CUDA (bf16 compute)."""
    from conftest import Worker
    from sdworker.tiny import make_tiny_model
    from sdworker.tiny.transformer_file import save_transformer_file

    root = tmp_path / "models"
    make_tiny_model("flux-dev", root / "tiny-flux-dev")
    save_transformer_file(root / "tiny-flux-dev", root / "diffusion_models" / "flux-q8.gguf")
    w = Worker(["--models-dir", str(root), "--device", "cuda", "--dtype", "bf16"])
    try:
        req = {"model_id": "diffusion_models/flux-q8", "prompt": "gpu", "steps": 2, "width": 64, "height": 64, "seed": 3}
        r = w.call("inference.text2img", req, timeout=240)
        assert r["success"], r
        params = r["data"]["parameters"]
        assert (params["device"], params["components_from"]) == ("cuda:0", "tiny-flux-dev")
        entries = [e for e in w.call("model.get_cache_status")["data"]["entries"] if e["component"] == "transformer"]
        assert any(e["device"].startswith("cuda") and e["source"].endswith(".gguf") for e in entries), entries
    finally:
        w.kill()
