"""inference.batch_process through the real worker: per-item errors, grouping, parity with diffusers."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

PROMPTS = ["a red house", "a blue boat on a lake", "a green tree in a field"]
SEEDS = [11, 22, 33]
BASE = {"model_id": "tiny-sd15", "width": 64, "height": 64, "steps": 3, "guidance_scale": 6.5, "negative_prompt": "ugly"}


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@pytest.fixture(scope="module")
def sd15(models_dir):
    pipe = DiffusionPipeline.from_pretrained(str(models_dir / "tiny-sd15"), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_compatible_items_share_one_call_and_a_bad_item_keeps_its_own_error(worker, sd15):
    reqs = [{**BASE, "prompt": p, "seed": s} for p, s in zip(PROMPTS, SEEDS)]
    reqs.insert(2, {**BASE, "model_id": "no-such-model", "prompt": "x", "seed": 1})  # (modelId beside BASE's model_id: a key conflict, issue 18)
    r = worker.call(
        "inference.batch_process",
        {"requests": reqs, "batchConfig": {"batchSize": 4, "enableDynamicSizing": False}, "session_id": "batch-1"},
        timeout=180,
    )
    assert r["success"], r
    data = r["data"]
    assert data["session_id"] == "batch-1"
    items = data["items"]
    assert [it["index"] for it in items] == [0, 1, 2, 3]
    assert [it["success"] for it in items] == [True, True, False, True]
    bad = items[2]["error"]
    assert bad["error_code"] == "model_not_found" and bad["error"]
    assert "images" not in items[2] or not items[2]["images"]
    perf = data["performance"]
    assert perf["groups"] == 1 and perf["pipeline_calls"] == 1 and perf["batch_sizes"] == [3]
    good = [items[0], items[1], items[3]]
    assert [it["images"][0]["seed"] for it in good] == SEEDS
    assert [it["parameters"]["prompt"] for it in good] == PROMPTS
    # Plain diffusers, one batched call with the same prompts list and generator list: equal, pixel for pixel.
    expected = sd15(
        prompt=PROMPTS, negative_prompt=["ugly"] * 3, width=64, height=64, num_inference_steps=3, guidance_scale=6.5,
        generator=[torch.Generator("cpu").manual_seed(s) for s in SEEDS],
    ).images
    for it, exp in zip(good, expected):
        assert np.array_equal(_decode(it["images"][0]["base64"]), np.asarray(exp.convert("RGB")))
    progress = worker.events("batch-1", "progress")
    assert progress and progress[-1]["data"]["step"] == progress[-1]["data"]["total_steps"] >= 3  # PNDM reports steps + 1
    assert "item_index" in progress[-1]["data"] and progress[-1]["data"]["groups"] == 1


def test_different_sizes_run_in_separate_groups_and_num_images_expands(worker):
    reqs = [
        {**BASE, "prompt": "a", "seed": 5, "num_images": 2},
        {**BASE, "prompt": "b", "seed": 6, "height": 96},
        {**BASE, "prompt": "c", "seed": 7},
    ]
    r = worker.call("inference.batch_process", {"requests": reqs, "batch_config": {"batch_size": 4, "enable_dynamic_sizing": False}}, timeout=180)
    assert r["success"], r
    data = r["data"]
    perf = data["performance"]
    assert perf["groups"] == 2 and perf["pipeline_calls"] == 2 and perf["batch_sizes"] == [3, 1]
    items = data["items"]
    assert all(it["success"] for it in items)
    assert [im["seed"] for im in items[0]["images"]] == [5, 6]
    assert [im["index"] for im in items[0]["images"]] == [0, 1]
    assert _decode(items[1]["images"][0]["base64"]).shape == (96, 64, 3)
    assert _decode(items[2]["images"][0]["base64"]).shape == (64, 64, 3)
    assert items[0]["parameters"]["batch_group"] == items[2]["parameters"]["batch_group"] != items[1]["parameters"]["batch_group"]


def test_batch_size_one_equals_single_requests_exactly(worker):
    reqs = [{**BASE, "prompt": p, "seed": s} for p, s in zip(PROMPTS[:2], SEEDS[:2])]
    r = worker.call("inference.batch_process", {"requests": reqs, "batch_config": {"batch_size": 1}}, timeout=180)
    assert r["success"], r
    assert r["data"]["performance"]["batch_sizes"] == [1, 1]
    for req, item in zip(reqs, r["data"]["items"]):
        single = worker.call("inference.text2img", req, timeout=120)
        assert single["success"], single
        assert np.array_equal(_decode(item["images"][0]["base64"]), _decode(single["data"]["images"][0]["base64"]))
        assert item["images"][0]["infotext"] == single["data"]["images"][0]["infotext"]


def test_dynamic_sizing_shrinks_calls_under_a_tiny_threshold(worker):
    reqs = [{**BASE, "prompt": p, "seed": s} for p, s in zip(PROMPTS, SEEDS)]
    cfg = {"batch_size": 4, "enable_dynamic_sizing": True, "memory_threshold": 1e-12}
    r = worker.call("inference.batch_process", {"requests": reqs, "batch_config": cfg}, timeout=180)
    assert r["success"], r
    perf = r["data"]["performance"]
    assert perf["batch_sizes"] == [1, 1, 1]
    assert perf["memory_estimates"][0]["images_per_call"] == 1 and perf["memory_estimates"][0]["estimated_mb_per_image"] > 0
    assert any("per call instead of 4" in w for w in r["data"]["warnings"])


def test_all_items_bad_is_a_success_with_per_item_errors(worker):
    reqs = [{**BASE, "model_id": "nope", "prompt": "x"}, {**BASE, "prompt": "y", "width": 63}, {"type": "upscale", "prompt": "z"}]
    r = worker.call("inference.batch_process", {"requests": reqs}, timeout=60)
    assert r["success"], r
    items = r["data"]["items"]
    assert [it["success"] for it in items] == [False, False, False]
    assert items[0]["error"]["error_code"] == "model_not_found"
    assert items[1]["error"]["error_code"] == "validation_error"
    assert items[1]["error"]["error_details"][0]["path"].startswith("data.requests[1].width")
    assert items[2]["error"]["error_code"] == "validation_error"
    assert r["data"]["performance"]["groups"] == 0 and r["data"]["warnings"]


def test_empty_requests_is_a_validation_error(worker):
    r = worker.call("inference.batch_process", {"requests": []}, timeout=30)
    assert not r["success"] and r["error_code"] == "validation_error"


def test_cancel_with_preserve_keeps_finished_items(worker):
    reqs = [{**BASE, "prompt": "quick", "seed": 1, "steps": 2}, {**BASE, "prompt": "slow", "seed": 2, "steps": 150}]
    sid = "batch-cancel"
    worker.send({"type": "inference.batch_process", "request_id": "bc", "data": {"requests": reqs, "session_id": sid}})
    worker.wait_for(
        lambda m: isinstance(m, dict) and m.get("event") == "progress" and m.get("session_id") == sid and m["data"].get("group") == 1,
        timeout=120,
    )
    c = worker.call("inference.cancel_session", {"session_id": sid, "preserve_results": True})
    assert c["success"], c
    r = worker.response("bc", timeout=120)
    assert not r["success"] and r["error_code"] == "cancelled"
    kept = r["data"]["items"]
    assert kept[0]["success"] and kept[0]["images"]
    assert not kept[1]["success"] and kept[1]["error"]["error_code"] == "cancelled"


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_modes_and_models_group_apart_and_img2img_batches_like_diffusers(worker, sd15):
    from diffusers import AutoPipelineForImage2Image

    rng = np.random.default_rng(3)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    i2i = {"model_id": "tiny-sd15", "init_image": _png_b64(init), "strength": 0.6, "steps": 5, "guidance_scale": 7.0}
    reqs = [
        {"model_id": "tiny-sdxl", "prompt": "a", "seed": 1, "steps": 2, "width": 64, "height": 64},
        {"model_id": "tiny-sd15", "type": "inpainting", "prompt": "i", "seed": 5, "steps": 2, "strength": 0.9,
         "init_image": _png_b64(init), "mask_image": _png_b64(Image.fromarray(mask))},
        {**i2i, "type": "img2img", "prompt": "p one", "seed": 3},
        {"model_id": "tiny-sdxl", "prompt": "b", "seed": 2, "steps": 2, "width": 64, "height": 64},
        {**i2i, "mode": "ImageToImage", "prompt": "p two", "seed": 4},
    ]
    r = worker.call("inference.batch_process", {"requests": reqs, "batch_config": {"enable_dynamic_sizing": False}}, timeout=300)
    assert r["success"], r
    items = r["data"]["items"]
    assert all(it["success"] for it in items), items
    perf = r["data"]["performance"]
    assert perf["groups"] == 3 and perf["batch_sizes"] == [2, 1, 2]  # sdxl first, then the sd15 groups in request order
    assert [items[i]["parameters"]["mode"] for i in range(5)] == ["text2img", "inpainting", "img2img", "text2img", "img2img"]
    expected = AutoPipelineForImage2Image.from_pipe(sd15)(
        prompt=["p one", "p two"], image=[init, init], strength=0.6, num_inference_steps=5, guidance_scale=7.0,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (3, 4)],
    ).images
    for it, exp in zip((items[2], items[4]), expected):
        assert np.array_equal(_decode(it["images"][0]["base64"]), np.asarray(exp.convert("RGB")))


def test_validate_request_checks_every_item(worker):
    reqs = [{**BASE, "prompt": "ok", "seed": 1}, {**BASE, "model_id": "nope"}]
    r = worker.call("inference.validate_request", {"method": "inference.batch_process", "request": {"requests": reqs}})
    assert r["success"], r
    v = r["data"]
    assert v["valid"] is False and v["normalized"]["valid_items"] == 1 and v["normalized"]["groups"] == 1
    assert v["errors"][0]["error_code"] == "model_not_found"


def test_weighted_prompts_batch_as_embeddings_and_match_single_requests(worker):
    reqs = [
        {**BASE, "prompt": "a (red:1.3) house", "seed": 8},
        {**BASE, "prompt": "plain words", "seed": 9},
        {**BASE, "prompt": "a [blue] boat", "seed": 10},
    ]
    r = worker.call("inference.batch_process", {"requests": reqs, "batch_config": {"batch_size": 4, "enable_dynamic_sizing": False}}, timeout=180)
    assert r["success"], r
    # weighted items share a call with stacked embeddings; the plain one is a text call of its own
    assert r["data"]["performance"]["groups"] == 1 and r["data"]["performance"]["batch_sizes"] == [2, 1]
    one = worker.call("inference.batch_process", {"requests": reqs[:1], "batch_config": {"batch_size": 1}}, timeout=180)
    single = worker.call("inference.text2img", reqs[0], timeout=120)
    assert single["success"] and one["success"]
    assert np.array_equal(_decode(one["data"]["items"][0]["images"][0]["base64"]), _decode(single["data"]["images"][0]["base64"]))
