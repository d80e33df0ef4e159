"""Input limits: prompt length, input image bytes and pixels, steps, batch, size, nesting.

Each limit is tested under, at and over it; a refusal is a validation_error whose details name
the field. Through the real worker for the settings (flags and SDWORKER_* env).
"""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path

import pytest

from sdworker import limits
from sdworker.errors import ValidationFailed
from sdworker.managers.images_in import decode_image
from sdworker.settings import Settings, load_settings


def _png(w: int, h: int, mode: str = "RGB", noise: bool = False) -> bytes:
    from PIL import Image

    img = Image.frombytes(mode, (w, h), __import__("os").urandom(w * h * len(mode))) if noise else Image.new(mode, (w, h))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def configured():
    """Set limits for one test, then put the defaults back."""

    def set_(**kw: int) -> limits.Limits:
        return limits.configure(Settings(**kw))

    from PIL import Image

    pil_limit = Image.MAX_IMAGE_PIXELS
    yield set_
    limits.configure(Settings())
    Image.MAX_IMAGE_PIXELS = pil_limit  # decoding sets PIL's process-wide guard; other tests need the default


# ---- unit -----------------------------------------------------------------------------------------------


def test_settings_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings([])
    assert (s.max_prompt_chars, s.max_image_bytes, s.max_image_pixels, s.max_steps) == (10000, 50 * 2**20, 64 * 2**20, 150)
    assert (s.ledger_keep, s.ledger_days) == (10000, None)
    monkeypatch.setenv("SDWORKER_MAX_PROMPT_CHARS", "77")
    monkeypatch.setenv("SDWORKER_MAX_IMAGE_BYTES", "1234")
    monkeypatch.setenv("SDWORKER_LEDGER_KEEP", "9")
    s = load_settings(["--max-image-pixels", "4096", "--max-image-bytes", "99", "--max-steps", "12", "--ledger-days", "2.5"])
    assert (s.max_prompt_chars, s.max_image_bytes, s.max_image_pixels, s.max_steps) == (77, 99, 4096, 12)
    assert (s.ledger_keep, s.ledger_days) == (9, 2.5)


def test_prompt_length_under_at_over(configured) -> None:
    from pydantic import ValidationError

    from sdworker.errors import from_validation
    from sdworker.schemas.generation import GenerationRequest, ParsePromptParams

    configured(max_prompt_chars=20)
    GenerationRequest.model_validate({"prompt": "x" * 20, "negative_prompt": "y" * 19})
    for field in ("prompt", "negative_prompt"):
        with pytest.raises(ValidationError) as ei:
            GenerationRequest.model_validate({field: "z" * 21})
        err = from_validation(ei.value, "data")
        assert err.code == "validation_error"
        assert err.details == [{"path": f"data.{field}", "message": "21 characters is over the limit of 20 (--max-prompt-chars)"}]
    with pytest.raises(ValidationError):  # the nested C# shape lands on the same field
        GenerationRequest.model_validate({"conditioning": {"prompt": "z" * 21}})
    with pytest.raises(ValidationError):
        ParsePromptParams.model_validate({"prompt": "z" * 21})
    configured(max_prompt_chars=50000)  # a setting, not a schema constant: raising it works
    GenerationRequest.model_validate({"prompt": "x" * 30000})


@pytest.mark.parametrize("raw_len", [0, 1, 2, 3, 4, 5, 100, 1001, 3000])
def test_base64_size_is_counted_without_decoding(raw_len: int) -> None:
    raw = bytes(range(256)) * (raw_len // 256 + 1)
    text = base64.b64encode(raw[:raw_len]).decode()
    assert limits.base64_decoded_size(text) == raw_len
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\r\n"
    assert limits.base64_decoded_size(wrapped) == raw_len


def test_image_bytes_limit_before_decoding(configured, tmp_path: Path) -> None:
    data = _png(64, 64, noise=True)
    configured(max_image_bytes=len(data))
    assert decode_image(base64.b64encode(data).decode(), "data.init_image", []).size == (64, 64)  # at the limit
    configured(max_image_bytes=len(data) - 1)
    for value in (base64.b64encode(data).decode(), "data:image/png;base64," + base64.b64encode(data).decode()):
        with pytest.raises(ValidationFailed) as ei:
            decode_image(value, "data.init_image", [])
        assert ei.value.details[0]["path"] == "data.init_image"
        assert f"image is {len(data)} bytes, over the limit of {len(data) - 1} (--max-image-bytes)" == ei.value.details[0]["message"]
    (tmp_path / "big.png").write_bytes(data)  # a path inside an allowed root: its file size counts
    with pytest.raises(ValidationFailed, match="--max-image-bytes"):
        decode_image(str(tmp_path / "big.png"), "data.mask_image", [tmp_path])


def test_image_pixels_limit_from_the_header(configured) -> None:
    from PIL import Image

    configured(max_image_pixels=64 * 64)
    assert decode_image(base64.b64encode(_png(64, 64)).decode(), "data.init_image", []).size == (64, 64)
    assert Image.MAX_IMAGE_PIXELS == 64 * 64  # PIL's own guard follows the setting
    # 1x-2x the limit is where PIL itself only warns (a log line on stderr): refused here all the same
    over = base64.b64encode(_png(64, 65)).decode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValidationFailed) as ei:
            decode_image(over, "data.init_image", [])
    assert ei.value.details == [{"path": "data.init_image", "message": "image is 64x65 = 4160 pixels, over the limit of 4096 (--max-image-pixels)"}]
    bomb = base64.b64encode(_png(4000, 4000, mode="1")).decode()  # 16 Mpx in a few kB
    with pytest.raises(ValidationFailed, match="--max-image-pixels"):
        decode_image(bomb, "data.mask_image", [])


# ---- through the real worker --------------------------------------------------------------------------


def test_limits_through_the_worker(spawn) -> None:
    small = _png(64, 64)
    big = _png(64, 64, noise=True)  # about 12 kB
    w = spawn(
        "--max-prompt-chars", "50", "--max-image-bytes", str(len(big) - 1), "--max-steps", "10",
        "--max-batch-size", "2", "--max-resolution", "512", "--max-json-depth", "16",
        env={"SDWORKER_MAX_IMAGE_PIXELS": str(64 * 64)},
    )
    base = {"model_id": "tiny-sdxl", "width": 64, "height": 64, "steps": 1}

    def refused(method: str, data: dict, path: str, text: str) -> dict:
        r = w.call(method, data)
        assert r["success"] is False and r["error_code"] == "validation_error", r
        assert any(d["path"] == path and text in d["message"] for d in r["error_details"]), r
        assert path in r["error"] or text in r["error"], r
        return r

    refused("inference.text2img", {**base, "prompt": "p" * 51}, "data.prompt", "over the limit of 50 (--max-prompt-chars)")
    refused("inference.text2img", {**base, "prompt": "ok", "negative_prompt": "n" * 51}, "data.negative_prompt", "--max-prompt-chars")
    refused("inference.text2img", {**base, "parameters": {"prompt": "p" * 51}}, "data.prompt", "--max-prompt-chars")
    b64 = base64.b64encode(big).decode()
    refused("inference.img2img", {**base, "prompt": "x", "init_image": b64}, "data.init_image", f"image is {len(big)} bytes")
    refused("inference.inpainting", {**base, "prompt": "x", "init_image": base64.b64encode(small).decode(), "mask_image": "data:image/png;base64," + b64},
            "data.mask_image", "--max-image-bytes")
    refused("inference.img2img", {**base, "prompt": "x", "init_image": base64.b64encode(_png(64, 72)).decode()}, "data.init_image", "--max-image-pixels")
    refused("inference.text2img", {**base, "prompt": "x", "steps": 11}, "data.steps", "over the limit of 10")
    refused("inference.text2img", {**base, "prompt": "x", "num_images": 3}, "data.num_images", "over the limit of 2")
    refused("inference.text2img", {**base, "prompt": "x", "width": 520}, "data.width", "over the limit of 512")
    # validate_request runs the same checks and names the same field
    v = w.call("inference.validate_request", {"request": {**base, "prompt": "p" * 51}})["data"]
    assert v["valid"] is False and v["errors"][0]["path"] == "data.prompt" and "--max-prompt-chars" in v["errors"][0]["message"]
    # a batch names the item
    r = w.call("inference.validate_request", {"method": "inference.batch_process", "request": {"requests": [{**base, "prompt": "ok"}, {**base, "prompt": "p" * 51}]}})["data"]
    assert r["valid"] is False and any("requests[1]" in e["path"] and "prompt" in e["path"] for e in r["errors"]), r
    # JSON nesting over --max-json-depth: one invalid_request answer, the worker goes on
    deep: dict = {"x": 1}
    for _ in range(20):
        deep = {"a": deep}
    r = w.call("inference.text2img", {**base, "prompt": "x", "extra": deep})
    assert r["error_code"] == "invalid_request" and "depth" in r["error"].lower(), r
    # at the limits everything passes validation
    ok = w.call("inference.validate_request", {"method": "inference.img2img", "request": {**base, "prompt": "p" * 50, "steps": 10, "num_images": 2, "init_image": base64.b64encode(small).decode()}})["data"]
    assert ok["valid"] is True, ok
    assert w.call("system.ping")["success"]
    assert w.close() == 0
    w.assert_pure_stdout()
