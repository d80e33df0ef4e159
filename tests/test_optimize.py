"""`optimize` through the real worker on tiny models (CPU): each option against plain, the step
caches' skipped calls, validation errors, worker defaults, batches and cancel with a cache on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import Worker, decode_png, family_worker, tiny_models_dir

BASE = {"model_id": "tiny-sd15", "prompt": "a red boat", "width": 64, "height": 64, "steps": 6, "guidance_scale": 6.0, "seed": 11}


@pytest.fixture(scope="module")
def w(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    wk = family_worker(models_dir, tmp_path_factory, "optimize")
    yield wk
    wk.kill()


def _gen(w: Worker, timeout: float = 120, **extra) -> dict:
    r = w.call("inference.text2img", {**BASE, **extra}, timeout=timeout)
    assert r["success"], r
    return r["data"]


def _img(data: dict) -> np.ndarray:
    return decode_png(data["images"][0]["base64"]).astype(np.int16)


@pytest.fixture(scope="module")
def plain(w: Worker) -> dict:
    return _gen(w)


@pytest.mark.parametrize("option", [{"fuse_qkv": True}, {"channels_last": True}, {"fuse_qkv": True, "channels_last": True}])
def test_exact_options_stay_within_float_tolerance(w: Worker, plain: dict, option: dict) -> None:
    data = _gen(w, optimize=option)
    assert np.abs(_img(data) - _img(plain)).max() <= 1  # float rounding at most: one 8-bit level
    eff = data["parameters"]["optimize"]
    assert eff["preset"] == "custom" and all(eff[k] is v for k, v in option.items())
    # the shared UNet and VAE are back as they were: a plain run after it is bit-identical
    assert np.array_equal(_img(_gen(w)), _img(plain))


def test_plain_reports_none(plain: dict) -> None:
    eff = plain["parameters"]["optimize"]
    assert eff["preset"] == "none" and eff["cache"] is None and not eff["compile"]
    assert plain["performance"].get("cache_skipped_steps") is None


def test_deepcache_skips_the_calls_it_says(w: Worker, plain: dict) -> None:
    # calls 0..5, interval 3, start 1: full at 0 and 3, cached at 1, 2, 4, 5
    data = _gen(w, optimize={"cache": {"kind": "deepcache", "interval": 3}})
    assert data["performance"]["cache_skipped_steps"] == 4
    assert data["parameters"]["optimize"]["cache"] == {"kind": "deepcache", "interval": 3, "branch": 0, "start": 1}
    diff = np.abs(_img(data) - _img(plain))
    assert 0 < diff.max() < 255  # a changed, still related image; exact closeness is measured in bench/speed.py
    data = _gen(w, optimize={"cache": {"kind": "deepcache", "interval": 2, "start": 2}})
    assert data["performance"]["cache_skipped_steps"] == 2  # full at 0, 1, 2, 4; cached at 3, 5
    assert np.array_equal(_img(_gen(w)), _img(plain))  # block forwards restored


def test_max_and_none_shorthands(w: Worker, plain: dict) -> None:
    data = _gen(w, optimize="MAX")
    eff = data["parameters"]["optimize"]
    assert eff["preset"] == "max" and eff["cache"]["kind"] == "deepcache" and eff["compile"] is False  # CPU: no compile
    assert data["performance"]["cache_skipped_steps"] == 4
    none = _gen(w, optimize="none")
    assert none["parameters"]["optimize"]["preset"] == "none" and np.array_equal(_img(none), _img(plain))


def test_img2img_with_cache(w: Worker, plain: dict) -> None:
    data = _gen(w, init_image=plain["images"][0]["base64"], strength=0.5, optimize={"cache": "deepcache"})
    r = w.call("inference.img2img", {**BASE, "init_image": plain["images"][0]["base64"], "strength": 0.5, "optimize": {"cache": "deepcache"}}, timeout=120)
    assert r["success"], r
    assert r["data"]["performance"]["cache_skipped_steps"] == 2  # 3 denoising calls: full, cached, cached
    assert data["parameters"]["optimize"]["cache"]["kind"] == "deepcache"


def _error(w: Worker, method: str = "inference.text2img", **extra) -> dict:
    r = w.call(method, {**BASE, **extra}, timeout=120)
    assert r["success"] is False and r["error_code"] == "validation_error", r
    return r


def test_bad_values_are_validation_errors(w: Worker) -> None:
    r = _error(w, optimize={"attention": "flash"})
    assert "native" in r["error"] and "flash" in r["error"]  # says what is available
    assert "native" in _error(w, optimize={"attention": "no_such_backend"})["error"]
    r = _error(w, optimize={"cache": {"kind": "first_block"}})
    assert "deepcache" in r["error"] and r["error_details"][0]["path"].endswith("optimize.cache.kind")
    assert _error(w, optimize={"cache": {"kind": "deepcache", "interval": 1}})["error_details"]
    assert _error(w, optimize={"cache": {"kind": "teacache"}})["error_details"]
    assert _error(w, optimize="fastest")["error_details"]
    assert _error(w, optimize={"compile": True, "turbo": True})["error_details"]


def test_unet_attention_backend_is_noted(w: Worker, plain: dict) -> None:
    data = _gen(w, optimize={"attention": "_native_math"})
    assert np.array_equal(_img(data), _img(plain))
    eff = data["parameters"]["optimize"]
    assert eff["attention"] == "native" and "UNet attention" in eff["notes"][0]


def test_batch_with_cache(w: Worker) -> None:
    reqs = [{**BASE, "seed": 1, "optimize": {"cache": "deepcache"}}, {**BASE, "seed": 2, "optimize": {"cache": "deepcache"}}]
    r = w.call("inference.batch_process", {"requests": reqs, "batch_config": {"batch_size": 4}}, timeout=180)
    assert r["success"], r
    results = r["data"]["items"]
    assert r["data"]["performance"]["pipeline_calls"] == 1  # equal options: one batched call
    assert all(x["success"] for x in results)
    assert all(x["parameters"]["optimize"]["cache"]["kind"] == "deepcache" for x in results)


def test_cancel_lands_with_cache_on(spawn) -> None:
    wk = spawn()
    wk.send({"type": "inference.text2img", "request_id": "oc", "data": {**BASE, "steps": 150, "optimize": "max"}})
    wk.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "oc", timeout=120)
    r = wk.call("inference.cancel_session", {"session_id": "oc"})
    step = r["data"]["step"]
    resp = wk.response("oc", timeout=60)
    assert resp["success"] is False and resp["error_code"] == "cancelled"
    st = wk.call("inference.get_session_status", {"session_id": "oc"})["data"]
    assert st["progress"]["step"] <= step + 1
    ok = wk.call("inference.text2img", BASE, timeout=120)
    assert ok["success"] and ok["data"]["parameters"]["optimize"]["preset"] == "none"


def test_worker_default_from_flag(spawn) -> None:
    wk = spawn("--optimize", '{"cache": {"kind": "deepcache", "interval": 2}}')
    data = wk.call("inference.text2img", BASE, timeout=120)["data"]
    assert data["parameters"]["optimize"]["cache"]["interval"] == 2
    assert data["performance"]["cache_skipped_steps"] == 3
    r = wk.call("inference.text2img", {**BASE, "optimize": "none"}, timeout=120)["data"]
    assert r["parameters"]["optimize"]["preset"] == "none"


def test_compile_once_and_reused(w: Worker, plain: dict) -> None:
    """torch.compile of the UNet's transformer blocks on CPU (needs a C compiler): equal image, compiled once."""
    first = _gen(w, timeout=600, optimize={"compile": True})
    assert np.abs(_img(first) - _img(plain)).max() <= 1
    assert first["performance"]["compile_ms"] > 0 and first["parameters"]["optimize"]["compile"] is True
    again = _gen(w, timeout=600, optimize={"compile": True}, seed=12)
    assert again["performance"].get("compile_ms") is None  # same model and shape: nothing compiled again
    assert again["performance"]["compiled_graphs"] == 0
    # a second size compiles once more (its shapes turn dynamic); a third size reuses that
    sizes = [_gen(w, timeout=600, optimize={"compile": True}, steps=2, width=s, height=s) for s in (96, 128)]
    assert [d["performance"]["compiled_graphs"] for d in sizes] == [1, 0]
    assert np.array_equal(_img(_gen(w)), _img(plain))  # eager again for a plain request


@pytest.fixture(scope="module")
def flux_worker(tmp_path_factory: pytest.TempPathFactory):
    root = tiny_models_dir(tmp_path_factory, "optflux", {"tiny-flux": "flux"})
    wk = family_worker(root, tmp_path_factory, "optflux")
    yield wk
    wk.kill()


def test_first_block_cache_on_flux(flux_worker: Worker) -> None:
    req = {"model_id": "tiny-flux", "prompt": "a red boat", "width": 64, "height": 64, "steps": 8, "seed": 3}
    plain = flux_worker.call("inference.text2img", req, timeout=180)
    assert plain["success"], plain
    r = flux_worker.call("inference.text2img", {**req, "optimize": {"cache": {"kind": "first_block", "threshold": 0.5}}}, timeout=180)
    assert r["success"], r
    assert r["data"]["performance"]["cache_skipped_steps"] > 0
    assert r["data"]["parameters"]["optimize"]["cache"] == {"kind": "first_block", "threshold": 0.5}
    assert "deepcache" not in str(r["data"]["parameters"]["optimize"])
    bad = flux_worker.call("inference.text2img", {**req, "optimize": {"cache": "deepcache", "channels_last": True}}, timeout=180)
    assert bad["error_code"] == "validation_error" and "first_block" in bad["error"]
    again = flux_worker.call("inference.text2img", req, timeout=180)
    assert np.array_equal(decode_png(again["data"]["images"][0]["base64"]), decode_png(plain["data"]["images"][0]["base64"]))


@pytest.fixture(scope="module")
def cn_worker(tmp_path_factory: pytest.TempPathFactory):
    from sdworker.tiny import make_tiny_model
    from sdworker.tiny.adapters import make_tiny_kohya_lora
    from sdworker.tiny.controlnet import make_tiny_controlnet

    root = tmp_path_factory.mktemp("optcn-models")
    make_tiny_model("sd15", root / "tiny-sd15")
    make_tiny_controlnet("sd15", root / "controlnet" / "tiny-sd15-cn")
    make_tiny_kohya_lora("sd15", root / "lora" / "style.safetensors", seed=3)
    make_tiny_kohya_lora("sd15", root / "lora" / "other.safetensors", seed=4)  # same rank and layers: hot-swaps
    wk = family_worker(root, tmp_path_factory, "optcn")
    yield wk
    wk.kill()


def test_controlnet_inpainting_with_cache(cn_worker: Worker) -> None:
    """The cache wraps the UNet's blocks, so ControlNet residuals still reach the blocks that run."""
    from PIL import Image

    from conftest import png_b64

    control = png_b64(Image.new("RGB", (64, 64), (255, 255, 255)))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    req = {**BASE, "controlnets": [{"model": "tiny-sd15-cn", "image": control}], "optimize": {"cache": "deepcache"}}
    r = cn_worker.call("inference.text2img", req, timeout=180)
    assert r["success"], r
    assert r["data"]["performance"]["cache_skipped_steps"] == 4 and r["data"]["parameters"]["controlnets"]
    init = r["data"]["images"][0]["base64"]
    r = cn_worker.call("inference.inpainting", {**req, "init_image": init, "mask_image": png_b64(mask.convert("RGB")), "strength": 1.0}, timeout=180)
    assert r["success"], r
    assert r["data"]["performance"]["cache_skipped_steps"] == 4


def test_a_preset_can_carry_optimize() -> None:
    from sdworker.store.presets.apply import request_values

    values = request_values({"steps": 12, "cfg_scale": 5.0, "model_specific_params": {"optimize": "max"}})
    assert values["optimize"] == "max"


def test_lora_with_fuse_and_cache(cn_worker: Worker) -> None:
    """fuse_qkv is left off (and says why) while a LoRA is active; the cache runs with it."""
    req = {**BASE, "loras": [{"name": "lora/style", "weight": 1.0}]}
    lora_plain = cn_worker.call("inference.text2img", req, timeout=180)
    assert lora_plain["success"], lora_plain
    r = cn_worker.call("inference.text2img", {**req, "optimize": {"fuse_qkv": True}}, timeout=180)
    assert r["success"], r
    eff = r["data"]["parameters"]["optimize"]
    assert eff["fuse_qkv"] is False and "LoRA" in eff["notes"][0]
    assert np.array_equal(_img(r["data"]), _img(lora_plain["data"]))
    r = cn_worker.call("inference.text2img", {**req, "optimize": {"cache": "deepcache"}}, timeout=180)
    assert r["success"] and r["data"]["performance"]["cache_skipped_steps"] == 4


def test_compile_lora_switch_does_not_recompile(cn_worker: Worker) -> None:
    """compile with LoRA A, then B (same rank: hot-swapped into the compiled blocks), then B again:
    only the first compiles, and each image matches its uncompiled run."""
    small = {**BASE, "steps": 2}
    a = {**small, "loras": [{"name": "lora/style", "weight": 1.0}]}
    b = {**small, "loras": [{"name": "lora/other", "weight": 1.0}]}
    both = {**small, "loras": [{"name": "lora/style", "weight": 0.7}, {"name": "lora/other", "weight": -0.5}]}
    eager = [cn_worker.call("inference.text2img", req, timeout=180) for req in (a, b, both)]
    assert all(r["success"] for r in eager), eager
    runs = [cn_worker.call("inference.text2img", {**req, "optimize": {"compile": True}}, timeout=600) for req in (a, b, b, both)]
    assert all(r["success"] for r in runs), runs
    graphs = [r["data"]["performance"]["compiled_graphs"] for r in runs]
    assert graphs[0] > 0 and graphs[1:] == [0, 0, 0], graphs  # two LoRAs with other weights: the same slot
    assert "notes" not in runs[1]["data"]["parameters"]["optimize"]
    for r, ref in zip(runs, [eager[0], eager[1], eager[1], eager[2]]):
        assert np.abs(_img(r["data"]) - _img(ref["data"])).max() <= 1
    assert not np.array_equal(_img(runs[0]["data"]), _img(runs[1]["data"]))  # B really replaced A
    after = cn_worker.call("inference.text2img", a, timeout=180)  # eager LoRA runs ignore the slot
    assert after["success"] and np.array_equal(_img(after["data"]), _img(eager[0]["data"]))
