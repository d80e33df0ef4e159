"""inference.upscale and post_processing: a tiny real-architecture upscaler through spandrel, tiled and not."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import Worker
from sdworker.managers.upscale import spandrel_installed

needs_spandrel = pytest.mark.skipif(not spandrel_installed(), reason="spandrel is not installed (pip install sdworker[upscale])")


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@pytest.fixture(scope="module")
def upscalers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from safetensors.torch import save_file

    from sdworker.tiny.upscaler import make_tiny_esrgan

    root = tmp_path_factory.mktemp("upscale-models")
    make_tiny_esrgan(root / "upscalers" / "tiny-x2.safetensors", scale=2)
    make_tiny_esrgan(root / "upscalers" / "tiny-x4.safetensors", scale=4, seed=1)
    save_file({"model.0.weight": torch.randn(8, 3, 3, 3), "model.0.bias": torch.zeros(8)}, str(root / "upscalers" / "broken.safetensors"))  # listed, not loadable
    (root / "embeddings").mkdir()
    save_file({"emb_params": torch.zeros(2, 768)}, str(root / "embeddings" / "tiny-embedding.safetensors"))  # a model of another kind
    return root


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def up(upscalers_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("upscale-out")
    w = Worker(["--models-dir", str(upscalers_dir), "--output-dir", str(out), "--device", "cpu"])
    w.out_dir = out  # type: ignore[attr-defined]
    yield w
    w.kill()


def _descriptor(path: Path):
    from sdworker.managers.upscale import spandrel_module

    return spandrel_module().ModelLoader().load_from_file(str(path))


def _direct(descriptor, img: Image.Image) -> np.ndarray:
    """The model's output for `img`, straight from spandrel, as uint8 (x255, rounded)."""
    import torch

    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    y = descriptor(x)
    return (y[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


# ---- the tiny model ----------------------------------------------------------------------------------


@needs_spandrel
def test_spandrel_detects_the_tiny_upscaler(upscalers_dir: Path) -> None:
    from sdworker.managers.upscale import spandrel_module
    from sdworker.models.detect import detect_file

    spandrel = spandrel_module()
    for name, scale in (("tiny-x2", 2), ("tiny-x4", 4)):
        path = upscalers_dir / "upscalers" / f"{name}.safetensors"
        d = _descriptor(path)
        assert isinstance(d, spandrel.ImageModelDescriptor)
        assert d.architecture.id == "Compact" and d.scale == scale and d.purpose == "SR"
        assert d.input_channels == 3 and d.output_channels == 3
        assert detect_file(path).kind == "upscaler"


# ---- through the worker --------------------------------------------------------------------------------


@needs_spandrel
def test_upscale_with_a_model(up: Worker, image: Image.Image) -> None:
    r = up.call("inference.upscale", {"image": _png_b64(image), "factor": 2, "model": "tiny-x2"}, timeout=120)
    assert r["success"], r
    data = r["data"]
    (img,) = data["images"]
    assert (img["index"], img["width"], img["height"], img["format"]) == (0, 192, 192, "png")
    assert _decode(img["base64"]).shape == (192, 192, 3)
    p = data["parameters"]
    assert p["model"] == "upscalers/tiny-x2" and p["upscaler"] == "RealESRGAN Compact" and p["model_scale"] == 2
    assert p["input_width"] == 96 and p["width"] == 192 and p["mode"] == "upscale"
    assert data["performance"]["loaded_from"] in ("disk", "cache") and data["performance"]["total_ms"] > 0
    assert data["session_id"] and data["warnings"] == []
    assert "Postprocess upscale by: 2" in img["infotext"]

    again = up.call("inference.upscale", {"image": _png_b64(image), "factor": 2, "model": "tiny-x2"}, timeout=120)
    assert again["data"]["performance"]["loaded_from"] == "cache"
    assert again["data"]["images"][0]["base64"] == img["base64"]
    cache = up.call("model.get_cache_status")["data"]
    assert any(e["component"] == "upscaler" and "upscalers/tiny-x2" in e["model_ids"] for e in cache["entries"]), cache


@needs_spandrel
def test_factor_other_than_the_model_scale(up: Worker, image: Image.Image, upscalers_dir: Path) -> None:
    """The model runs at its own scale (x4), then Lanczos makes the asked size (x3, x1.5)."""
    for factor, side in ((3, 288), (1.5, 144)):
        r = up.call("inference.upscale", {"image": _png_b64(image), "factor": factor, "model": "tiny-x4"}, timeout=120)
        assert r["success"], r
        got = _decode(r["data"]["images"][0]["base64"])
        assert got.shape == (side, side, 3)
        model_out = Image.fromarray(_direct(_descriptor(upscalers_dir / "upscalers" / "tiny-x4.safetensors"), image))
        want = np.asarray(model_out.resize((side, side), Image.Resampling.LANCZOS))
        assert np.array_equal(got, want)


@needs_spandrel
def test_tiled_equals_untiled_and_parity_with_spandrel(up: Worker, image: Image.Image, upscalers_dir: Path) -> None:
    def run(tile: int) -> np.ndarray:
        r = up.call("inference.upscale", {"image": _png_b64(image), "factor": 2, "model": "tiny-x2", "tile": tile}, timeout=120)
        assert r["success"], r
        assert r["data"]["parameters"]["tile"] == tile
        return _decode(r["data"]["images"][0]["base64"])

    whole, tiled, small_tiles, one_tile = run(0), run(64), run(32), run(128)
    assert np.array_equal(whole, one_tile)  # tile >= image: one pass, the same computation
    for t in (tiled, small_tiles):  # the margin covers the receptive field: equal up to float rounding
        assert np.abs(whole.astype(int) - t.astype(int)).max() <= 1
    want = _direct(_descriptor(upscalers_dir / "upscalers" / "tiny-x2.safetensors"), image)
    assert np.array_equal(whole, want)


@needs_spandrel
def test_tiles_report_progress(up: Worker, image: Image.Image) -> None:
    sid = "upscale-progress"
    r = up.call("inference.upscale", {"image": _png_b64(image), "factor": 2, "model": "tiny-x2", "tile": 32, "session_id": sid}, timeout=120)
    assert r["success"], r
    events = up.events(sid, "progress")
    assert events and events[-1]["data"]["step"] == 9 and events[-1]["data"]["total_steps"] == 9
    statuses = [e["data"]["status"] for e in up.events(sid, "session_status")]
    assert statuses[-1] == "completed" and "running" in statuses


def test_lanczos_only(up: Worker, image: Image.Image) -> None:
    for model in (None, "lanczos"):
        data = {"image": _png_b64(image), "factor": 2.5, **({"model": model} if model else {})}
        r = up.call("inference.upscale", data, timeout=60)
        assert r["success"], r
        got = _decode(r["data"]["images"][0]["base64"])
        assert np.array_equal(got, np.asarray(image.resize((240, 240), Image.Resampling.LANCZOS)))
        assert r["data"]["parameters"]["model"] is None and r["data"]["parameters"]["upscaler"] == "Lanczos"


def test_output_options_and_paths(up: Worker, image: Image.Image) -> None:
    out: Path = up.out_dir  # type: ignore[attr-defined]
    Image.fromarray(np.asarray(image)).save(out / "in.png")
    r = up.call("inference.upscale", {"image": "in.png", "factor": 2, "output": {"format": "jpeg", "quality": 80, "save_path": "up/big.jpg", "return_base64": False}})
    assert r["success"], r
    img = r["data"]["images"][0]
    assert "base64" not in img or img["base64"] is None
    assert img["format"] == "jpeg" and Path(img["path"]) == out / "up" / "big.jpg"
    assert Image.open(img["path"]).size == (192, 192)


def test_legacy_action_and_aliases(up: Worker, image: Image.Image) -> None:
    up.send({"action": "execute_inference", "inference_type": "upscale", "session_id": "legacy-up", "prompt": "", "model_id": "lanczos", "parameters": {"image": _png_b64(image), "scale": 2}})
    r = up.wait_for(lambda m: isinstance(m, dict) and m.get("session_id") == "legacy-up" and "success" in m, timeout=60)
    assert r["success"], r
    assert r["results"]["images"][0]["width"] == 192


def test_errors(up: Worker, image: Image.Image) -> None:
    b64 = _png_b64(image)
    cases = [
        ({"image": b64, "model": "no-such-upscaler"}, "model_not_found", "data.model"),
        ({"image": b64, "factor": 0}, "validation_error", "data.factor"),
        ({"image": b64, "factor": 9}, "validation_error", "data.factor"),
        ({"image": b64, "model": "tiny-embedding"}, "validation_error", "data.model"),
        ({"image": "!!!notbase64!!!"}, "validation_error", "data.image"),
        ({"image": base64.b64encode(b"not an image at all").decode()}, "validation_error", "data.image"),
        ({"image": b64, "tile": 8}, "validation_error", "data.tile"),
        ({"image": b64, "factor": 2, "bogus": 1}, "validation_error", "data.bogus"),
        ({"image": "../../etc/passwd.png"}, "unsafe_path", "data.image"),
    ]
    for data, code, path in cases:
        r = up.call("inference.upscale", data)
        assert not r["success"] and r["error_code"] == code, (data.keys(), r)
        assert r["error_details"][0]["path"] == path, r
    up.assert_pure_stdout()
    assert "Traceback" not in up.stderr()


@needs_spandrel
def test_an_unloadable_upscaler_fails_the_job_cleanly(up: Worker, image: Image.Image) -> None:
    r = up.call("inference.upscale", {"image": _png_b64(image), "model": "broken"}, timeout=60)
    assert r["error_code"] == "model_load_failed" and "broken" in r["error"], r
    assert up.call("inference.upscale", {"image": _png_b64(image), "model": "tiny-x2"}, timeout=60)["success"]


def test_result_size_limit(upscalers_dir: Path, image: Image.Image) -> None:
    w = Worker(["--models-dir", str(upscalers_dir), "--max-image-pixels", "100000"])
    try:
        r = w.call("inference.upscale", {"image": _png_b64(image), "factor": 4})  # 384 x 384 = 147456 pixels
        assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.factor", r
        assert w.call("inference.upscale", {"image": _png_b64(image), "factor": 3})["success"]  # 288 x 288 fits
    finally:
        w.kill()


# ---- post_processing, in process ---------------------------------------------------------------------------


@needs_spandrel
def test_apply_post_processing(upscalers_dir: Path, image: Image.Image) -> None:
    from sdworker.managers.catalog import ModelCatalog
    from sdworker.managers.memory import MemoryManager
    from sdworker.managers.upscale import UpscalerManager, apply_post_processing, check_post_processing
    from sdworker.errors import ModelNotFound, ValidationFailed

    memory = MemoryManager()
    ups = UpscalerManager(memory, ModelCatalog([upscalers_dir]))
    specs = [{"type": "upscale", "factor": 2, "model": "tiny-x2", "tile": 64}, {"type": "Upscale", "scale": 1.5}]
    assert [s.factor for s in check_post_processing(specs, ups)] == [2.0, 1.5]
    out = apply_post_processing([image, image.rotate(90)], specs, None, ups, "cpu")
    assert [im.size for im in out] == [(288, 288), (288, 288)]
    want = Image.fromarray(_direct(_descriptor(upscalers_dir / "upscalers" / "tiny-x2.safetensors"), image)).resize((288, 288), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(out[0]).astype(int) - np.asarray(want).astype(int)).max() <= 1
    assert [e.component for e in memory.entries()] == ["upscaler"]
    with pytest.raises(ModelNotFound):
        check_post_processing([{"type": "upscale", "model": "nope"}], ups)
    with pytest.raises(ValidationFailed) as err:
        check_post_processing([{"type": "upscale", "factor": 2}, {"type": "upscale", "factor": 20}], ups)
    assert err.value.details[0]["path"] == "post_processing[1].factor"
    with pytest.raises(ValidationFailed):
        check_post_processing([{"type": "face_restore"}], ups)
    with pytest.raises(ValidationFailed):
        check_post_processing([{"type": "upscale", "model": "tiny-embedding"}], ups)


@needs_spandrel
def test_validate_helper(upscalers_dir: Path, image: Image.Image) -> None:
    """UpscaleInterface.validate: what inference.validate_request answers for an upscale request."""
    from sdworker.app import App
    from sdworker.errors import ModelNotFound
    from sdworker.schemas.postprocess import UpscaleRequest
    from sdworker.settings import Settings

    upscale = App(Settings(models_dirs=[upscalers_dir]), io.BytesIO()).upscale
    out = upscale.validate(UpscaleRequest(image=_png_b64(image), factor=3, model="tiny-x2"), "v1")
    assert out["valid"] and out["normalized"]["model"] == "upscalers/tiny-x2"
    assert (out["normalized"]["width"], out["normalized"]["input_width"]) == (288, 96) and out["normalized"]["image"].startswith("<")
    with pytest.raises(ModelNotFound):
        upscale.validate(UpscaleRequest(image=_png_b64(image), model="nope"), "v2")


def test_without_spandrel_a_model_is_unsupported(upscalers_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sdworker.managers.upscale as up_mod
    from sdworker.managers.catalog import ModelCatalog
    from sdworker.managers.memory import MemoryManager
    from sdworker.errors import Unsupported

    monkeypatch.setattr(up_mod, "spandrel_installed", lambda: False)
    ups = up_mod.UpscalerManager(MemoryManager(), ModelCatalog([upscalers_dir]))
    with pytest.raises(Unsupported) as err:
        ups.resolve("tiny-x2")
    assert err.value.details[0]["path"] == "model"
    assert up_mod.check_post_processing([{"type": "upscale", "factor": 2}], ups)[0].model is None  # Lanczos needs no spandrel
