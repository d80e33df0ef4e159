"""Step caches of the transformer families through the real worker on tiny models (CPU): First
Block Cache on SD 3.5 (whose last block returns no text stream), TaylorSeer on SD 3.5 and HiDream,
both Wan 2.2 experts cached, and each model's plain output unchanged afterwards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import Worker, decode_png, family_worker, tiny_models_dir

SD3 = {"model_id": "tiny-sd35", "prompt": "a red boat", "width": 64, "height": 64, "steps": 8, "guidance_scale": 4.0, "seed": 5}
HIDREAM = {"model_id": "tiny-hidream", "prompt": "a red boat", "width": 128, "height": 128, "steps": 8, "seed": 5}
WAN = {"model_id": "tiny-wan22", "prompt": "a red boat", "width": 64, "height": 64, "num_frames": 9, "steps": 8, "seed": 5,
       "output": {"frames": True}}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models_dir(tmp_path_factory, "optdit", {"tiny-sd35": "sd35-large", "tiny-hidream": "hidream", "tiny-wan22": "wan22"})


@pytest.fixture(scope="module")
def w(root: Path, tmp_path_factory: pytest.TempPathFactory):
    wk = family_worker(root, tmp_path_factory, "optdit")
    yield wk
    wk.kill()


def _run(w: Worker, req: dict, method: str = "inference.text2img", **extra) -> dict:
    r = w.call(method, {**req, **extra}, timeout=240)
    assert r["success"], r
    return r["data"]


def _pixels(data: dict) -> np.ndarray:
    if "videos" in data:
        return np.stack([decode_png(f) for f in data["videos"][0]["frames"]]).astype(np.int16)
    return decode_png(data["images"][0]["base64"]).astype(np.int16)


def _predicted(calls: int, start: int, interval: int) -> int:
    """TaylorSeer's schedule: full calls before `start`, then one in every `interval`."""
    return sum(1 for s in range(start, calls) if (s - start - 1) % interval != 0)


def test_sd3_first_block_cache_and_taylorseer(w: Worker) -> None:
    plain = _run(w, SD3)
    fbc = _run(w, SD3, optimize={"cache": {"kind": "first_block", "threshold": 0.9}})
    assert fbc["parameters"]["optimize"]["cache"] == {"kind": "first_block", "threshold": 0.9}
    assert fbc["performance"]["cache_skipped_steps"] > 0  # the last block's missing text stream no longer breaks it
    ts = _run(w, SD3, optimize={"cache": "taylorseer"})
    assert ts["parameters"]["optimize"]["cache"] == {"kind": "taylorseer", "interval": 3, "start": 3, "order": 1}
    assert ts["performance"]["cache_skipped_steps"] == _predicted(8, 3, 3) == 3  # CFG batched: one call a step
    diff = np.abs(_pixels(ts) - _pixels(plain))
    assert 0 < diff.max() < 255
    assert _run(w, SD3, optimize="max")["parameters"]["optimize"]["cache"]["kind"] == "first_block"
    assert np.array_equal(_pixels(_run(w, SD3)), _pixels(plain))  # every hook came off


def test_hidream_takes_taylorseer(w: Worker) -> None:
    plain = _run(w, HIDREAM)
    ts = _run(w, HIDREAM, optimize={"cache": {"kind": "taylorseer", "interval": 2, "start": 2, "order": 2}})
    assert ts["performance"]["cache_skipped_steps"] == _predicted(8, 2, 2) == 3
    assert not np.array_equal(_pixels(ts), _pixels(plain))
    mx = _run(w, HIDREAM, optimize="max")
    assert mx["parameters"]["optimize"]["cache"] == {"kind": "taylorseer", "interval": 2, "start": 3, "order": 1}
    assert mx["performance"]["cache_skipped_steps"] == _predicted(8, 3, 2) == 3
    r = w.call("inference.text2img", {**HIDREAM, "optimize": {"cache": "first_block"}}, timeout=240)
    assert r["error_code"] == "validation_error" and "taylorseer" in r["error"], r
    assert r["error_details"][0]["path"] == "data.optimize.cache.kind"
    assert np.array_equal(_pixels(_run(w, HIDREAM)), _pixels(plain))


def test_taylorseer_start_zero_is_refused(w: Worker) -> None:
    r = w.call("inference.text2img", {**SD3, "optimize": {"cache": {"kind": "taylorseer", "start": 0}}}, timeout=240)
    assert r["error_code"] == "validation_error" and "start" in r["error_details"][0]["path"], r


def test_wan22_caches_both_experts(w: Worker, root: Path) -> None:
    plain = _run(w, WAN, "inference.text2video")
    ts = _run(w, WAN, "inference.text2video", optimize={"cache": {"kind": "taylorseer", "interval": 2, "start": 1}})
    # cond and uncond are separate calls with their own state, on each expert for its share of the steps
    high = _high_noise_steps(root / "tiny-wan22", 8)
    want = 2 * (_predicted(high, 1, 2) + _predicted(8 - high, 1, 2))
    assert 0 < high < 8 and ts["performance"]["cache_skipped_steps"] == want
    assert np.array_equal(_pixels(_run(w, WAN, "inference.text2video")), _pixels(plain))


def _high_noise_steps(folder: Path, steps: int) -> int:
    """How many of `steps` diffusers' WanPipeline gives the first (high-noise) expert."""
    import json

    from diffusers import UniPCMultistepScheduler

    ratio = json.loads((folder / "model_index.json").read_text())["boundary_ratio"]
    sched = UniPCMultistepScheduler.from_pretrained(folder / "scheduler")
    sched.set_timesteps(steps)
    return int(sum(1 for t in sched.timesteps if t >= ratio * sched.config.num_train_timesteps))
