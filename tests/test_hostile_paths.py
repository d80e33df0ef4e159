"""Hostile paths and files through the real worker (issue 18, items 1, 3, 4, 10-13).

A FIFO named like an image or a model, symlink loops and self-links in a models dir, links out of
the models dir below a model's own path (components, sidecars), pickles with and without
--allow-pickle, garbage model_index.json, files that are present but unreadable, and init images
that would decide the output size past --max-resolution. Each is answered with the error that
says what happened (never a hang, never internal_error), and the worker goes on serving.

Two workers share the module: `hostile` (no --allow-pickle, --max-resolution 64) and `pickles`
(--allow-pickle, the default limits).
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import Worker, decode_png, png_b64

JOB = {"prompt": "hostile", "width": 64, "height": 64, "steps": 1, "seed": 11}


# ---- the models dir ---------------------------------------------------------------------------------


def _copy(models_dir: Path, dst: Path) -> Path:
    shutil.copytree(models_dir / "tiny-sd15", dst)
    return dst


def _bin_folder(models_dir: Path, dst: Path) -> Path:
    """A tiny-sd15 copy whose unet weights are a pickle (.bin) only, as older diffusers saved them."""
    _copy(models_dir, dst)
    weights = dst / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), str(weights.with_suffix(".bin")))
    weights.unlink()
    return dst


def _lora_file(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    state = {f"{base}.lora_down.weight": torch.randn(4, 768, generator=g), f"{base}.lora_up.weight": torch.randn(320, 4, generator=g), f"{base}.alpha": torch.tensor(4.0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"ss_base_model_version": "sd_v1"})
    return path


class _RunsCode:
    """A pickle that would make a folder when unpickled by a full unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    return build_outside(tmp_path_factory.mktemp("outside"), models_dir)


def build_outside(out: Path, models_dir: Path) -> Path:
    """Files out of every models dir that links try to reach."""
    shutil.copytree(models_dir / "tiny-sd15" / "unet", out / "unet")
    (out / "secret.json").write_text('{"secret": "outside-the-models-dir"}', encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def library(models_dir: Path, outside: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_library(tmp_path_factory.mktemp("hostile-models"), models_dir, outside)


def build_library(root: Path, models_dir: Path, outside: Path) -> Path:
    """The hostile models dir: good tiny SD 1.5 models next to every case of this module."""
    from sdworker.tiny import make_tiny_model

    _copy(models_dir, root / "tiny-sd15")
    single = make_tiny_model("sd15", root / "checkpoints" / "single-sd15.safetensors", single_file=True)
    state = load_file(str(single))
    # item 11: the same weights as a pickle checkpoint, in checkpoints/ and (neutral name) at the top
    torch.save({"state_dict": state}, str(root / "checkpoints" / "tiny-sd15.ckpt"))
    torch.save(state, str(root / "mystery.ckpt"))
    _bin_folder(models_dir, root / "bin-folder")
    (root / "checkpoints" / "garbage.ckpt").write_bytes(b"\x80\x04not really a pickle")
    (root / "checkpoints" / "runs-code.ckpt").write_bytes(pickle.dumps({"state_dict": _RunsCode(root.parent / "pwned")}))
    # item 4: a loop, links back up, a dangling link, a link out
    os.symlink("loop", root / "loop")
    for i in range(4):
        os.symlink(".", root / f"again{i}")
    os.symlink("nowhere", root / "dangling")
    os.symlink(outside, root / "linked-out")
    # item 1: FIFOs where a model or a sidecar would be
    os.mkfifo(root / "checkpoints" / "fifo.safetensors")
    _copy(models_dir, root / "fifo-inside")
    weights = root / "fifo-inside" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    # item 10: links out below a model's own path, and a link inside the models dir (fine)
    escape = _copy(models_dir, root / "escape-unet")
    shutil.rmtree(escape / "unet")
    os.symlink(outside / "unet", escape / "unet")
    inside = _copy(models_dir, root / "linked-inside")
    shutil.rmtree(inside / "unet")
    os.symlink("../tiny-sd15/unet", inside / "unet")
    side = _copy(models_dir, root / "escape-sidecar")
    os.symlink(outside / "secret.json", side / "sdworker.json")
    torch.save(load_file(str(_lora_file(root / "lora" / "style.safetensors"))), str(root / "lora" / "style-old.pt"))
    os.symlink(outside / "secret.json", root / "lora" / "style.json")
    make_tiny_model("sd15", root / "checkpoints" / "peek.safetensors", single_file=True)
    os.symlink(outside / "secret.json", root / "checkpoints" / "peek.json")
    # item 12: garbage model_index.json
    for name, text in (("index-not-json", "{not json"), ("index-list", "[1, 2, 3]"), ("index-int-class", '{"_class_name": 5, "unet": ["diffusers", "UNet2DConditionModel"]}')):
        folder = _copy(models_dir, root / name)
        (folder / "model_index.json").write_text(text, encoding="utf-8")
    # item 13: present but unreadable
    data = single.read_bytes()
    (root / "checkpoints" / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "checkpoints" / "empty.safetensors").write_bytes(b"")
    (root / "checkpoints" / "bad-header.safetensors").write_bytes(b"\xff" * 8 + b"garbage" * 100)
    (root / "unet").mkdir()
    (root / "unet" / "bad.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(200))
    (root / "lora" / "garbage.safetensors").write_bytes(os.urandom(4096))
    return root


@pytest.fixture(scope="module")
def hostile(library: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("hostile-out")
    os.mkfifo(out / "fifo.png")
    w = Worker(["--models-dir", str(library), "--output-dir", str(out), "--data-dir", str(tmp_path_factory.mktemp("hostile-data")), "--max-resolution", "64"])
    w.out = out  # type: ignore[attr-defined]
    yield w
    w.kill()


@pytest.fixture(scope="module")
def pickles(library: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("pickles-out")
    w = Worker(["--models-dir", str(library), "--output-dir", str(out), "--data-dir", str(tmp_path_factory.mktemp("pickles-data")), "--allow-pickle"])
    yield w
    w.kill()


def _png(size: tuple[int, int], mode: str = "RGB") -> str:
    from PIL import Image

    return png_b64(Image.new(mode, size, 255 if mode != "RGB" else (40, 90, 200)))


def _still_serving(w: Worker) -> None:
    assert w.call("system.ping", timeout=10)["success"]
    assert w.proc.poll() is None


def _error(r: dict[str, Any], code: str, *words: str) -> None:
    assert r["success"] is False and r["error_code"] == code, r
    for word in words:
        assert word in r["error"], (word, r)
    assert "Traceback" not in r["error"]


# ---- item 1: FIFOs -----------------------------------------------------------------------------------


def test_a_fifo_named_like_an_image_is_refused_at_once(hostile: Worker) -> None:
    for method, field, data in (
        ("inference.img2img", "init_image", {**JOB, "model_id": "tiny-sd15", "init_image": "fifo.png"}),
        ("inference.inpainting", "mask_image", {**JOB, "model_id": "tiny-sd15", "init_image": _png((64, 64)), "mask_image": "fifo.png"}),
        ("inference.upscale", "image", {"image": "fifo.png", "factor": 2}),
    ):
        r = hostile.call(method, data, timeout=30)
        _error(r, "validation_error", "fifo.png", "FIFO")
        assert r["error_details"][0]["path"] == f"data.{field}", r
        _still_serving(hostile)


def test_a_preset_import_naming_a_fifo_is_refused_at_once(hostile: Worker) -> None:
    """config.import's `path` is host-given too: a FIFO there is refused, not read (reading it would
    wait for a writer that never comes); a regular file next to it still imports."""
    out: Path = hostile.out  # type: ignore[attr-defined]
    r = hostile.call("config.import", {"path": str(out / "fifo.png")}, timeout=30)
    _error(r, "validation_error", "fifo.png", "FIFO")
    assert r["error_details"][0]["path"] == "data.path", r
    _still_serving(hostile)
    (out / "presets.jsonl").write_text("", encoding="utf-8")
    assert hostile.call("config.import", {"path": str(out / "presets.jsonl")}, timeout=30)["success"]


def test_fifos_in_the_models_dir_never_block(hostile: Worker) -> None:
    items = hostile.call("model.list_models", {"refresh": True}, timeout=60)
    assert items["success"], items
    assert "checkpoints/fifo" not in {i["model_id"] for i in items["data"]["items"]}
    r = hostile.call("inference.text2img", {**JOB, "model_id": "fifo-inside"}, timeout=60)
    _error(r, "model_load_failed", "FIFO")
    _still_serving(hostile)
    assert "not a regular file" in hostile.stderr()


# ---- item 3: an init image cannot decide the size past the limits -----------------------------------


def test_a_size_taken_from_the_init_image_obeys_max_resolution(hostile: Worker) -> None:
    big = _png((128, 128))
    for method, extra in (("inference.img2img", {}), ("inference.inpainting", {"mask_image": _png((128, 128), "L")})):
        data = {"model_id": "tiny-sd15", "prompt": "x", "steps": 2, "seed": 3, "init_image": big, **extra}  # 2 steps: 1 at strength 0.75
        r = hostile.call(method, data, timeout=30)
        _error(r, "validation_error", "--max-resolution", "128")
        assert r["error_details"][0]["path"] == "data.init_image", r
        v = hostile.call("inference.validate_request", {"method": method, "request": data}, timeout=30)
        assert v["success"] and v["data"]["valid"] is False, v
        ok = hostile.call(method, {**data, "width": 64, "height": 64, "output": {"return_base64": False}}, timeout=120)
        assert ok["success"], ok
        assert (ok["data"]["images"][0]["width"], ok["data"]["images"][0]["height"]) == (64, 64)


def _header_only_png(size: tuple[int, int]) -> str:
    """A PNG whose header and chunk CRCs are right but whose pixel data is garbage: reading its header
    works, decoding its pixels fails. A size check that answers for it ran before any decoding."""
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", size).save(buf, format="PNG")  # 8 KB for 8192x8192
    data, out, i = buf.getvalue(), bytearray(buf.getvalue()[:8]), 8
    while i < len(data):
        n = struct.unpack(">I", data[i : i + 4])[0]
        kind, body = data[i + 4 : i + 8], data[i + 8 : i + 8 + n]
        if kind == b"IDAT":
            body = b"\xab" * len(body)
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        i += 12 + n
    return base64.b64encode(bytes(out)).decode()


def test_an_8192_init_image_is_refused_from_its_header(pickles: Worker) -> None:
    huge = _header_only_png((8192, 8192))
    data = {"model_id": "tiny-sd15", "prompt": "x", "steps": 2, "init_image": huge}
    r = pickles.call("inference.img2img", data, timeout=60)
    _error(r, "validation_error", "8192", "--max-resolution")  # not "not a readable image": no pixel was decoded
    r = pickles.call("inference.img2img", {**data, "width": 64, "height": 64}, timeout=60)
    _error(r, "validation_error", "not a readable image")  # with a size sent, the pixels are decoded (and fail here)
    _still_serving(pickles)


# ---- item 4: bad symlinks in a models dir --------------------------------------------------------------


def test_a_symlink_loop_and_self_links_break_nothing(hostile: Worker, library: Path) -> None:
    r = hostile.call("model.list_models", {"refresh": True}, timeout=60)
    assert r["success"], r
    ids = [i["model_id"] for i in r["data"]["items"]]
    assert len(ids) == len(set(ids))
    assert not [i for i in ids if i.startswith(("again", "loop", "dangling", "linked-out"))], ids
    paths = [i["path"] for i in r["data"]["items"]]
    assert len(paths) == len(set(paths)), "one real path, one id"
    assert ids.count("tiny-sd15") == 1
    ok = hostile.call("inference.text2img", {**JOB, "model_id": "tiny-sd15", "output": {"return_base64": False}}, timeout=120)
    assert ok["success"], ok
    err = hostile.stderr()
    assert "loop" in err and "cannot be resolved" in err and "links outside the models dir" in err, err[-3000:]


# ---- item 10: links out below a model's own path ----------------------------------------------------


def test_a_component_linking_out_of_the_models_dir_is_refused(hostile: Worker) -> None:
    for method, data in (
        ("inference.text2img", {**JOB, "model_id": "escape-unet"}),
        ("model.load_model", {"model_id": "escape-unet"}),
        ("model.get_model_info", {"model_id": "escape-unet"}),
    ):
        _error(hostile.call(method, data, timeout=60), "unsafe_path", "outside the models dir")
    listed = {i["model_id"]: i for i in hostile.call("model.list_models", {"refresh": True})["data"]["items"]}
    assert listed["escape-unet"]["details"]["unsafe"], listed["escape-unet"]
    ok = hostile.call("inference.text2img", {**JOB, "model_id": "linked-inside", "output": {"return_base64": False}}, timeout=120)
    assert ok["success"], ok  # a link that stays inside the models dir is fine


def test_a_sidecar_linking_out_is_neither_read_nor_written(hostile: Worker, outside: Path) -> None:
    before = (outside / "secret.json").read_text(encoding="utf-8")
    for model_id in ("checkpoints/peek", "lora/style", "escape-sidecar"):
        r = hostile.call("model.get_model_info", {"model_id": model_id}, timeout=30)
        _error(r, "unsafe_path", "outside the models dir")
        assert "outside-the-models-dir" not in str(r)
        r = hostile.call("model.update_metadata", {"model_id": model_id, "metadata": {"notes": "x"}}, timeout=30)
        _error(r, "unsafe_path")
        r = hostile.call("model.get_metadata", {"model_id": model_id}, timeout=30)
        assert r["success"] is False and "outside-the-models-dir" not in str(r), r
    assert (outside / "secret.json").read_text(encoding="utf-8") == before


# ---- item 11: --allow-pickle says what it does ---------------------------------------------------------


@pytest.mark.parametrize("model_id", ["checkpoints/tiny-sd15", "bin-folder"])
def test_without_allow_pickle_pickles_are_refused_naming_the_flag(hostile: Worker, model_id: str) -> None:
    for method, data in (("inference.text2img", {**JOB, "model_id": model_id}), ("model.load_model", {"model_id": model_id})):
        _error(hostile.call(method, data, timeout=60), "unsafe_path", "--allow-pickle")
    listed = {i["model_id"]: i for i in hostile.call("model.list_models")["data"]["items"]}
    assert listed[model_id]["pickle"] is True
    _error(hostile.call("model.load_lora", {"model_id": "lora/style-old"}, timeout=60), "unsafe_path", "--allow-pickle")


def test_with_allow_pickle_a_ckpt_and_bin_weights_load_weights_only(pickles: Worker, library: Path) -> None:
    def image(model_id: str) -> Any:
        r = pickles.call("inference.text2img", {**JOB, "model_id": model_id}, timeout=180)
        assert r["success"], r
        return decode_png(r["data"]["images"][0]["base64"])

    single = image("checkpoints/single-sd15")
    assert (image("checkpoints/tiny-sd15") == single).all()  # the .ckpt holds the same weights
    assert (image("mystery") == single).all()  # no name to go by: its tensors say sd_1_5
    assert (image("bin-folder") == image("tiny-sd15")).all()
    lora = pickles.call("model.load_lora", {"model_id": "lora/style-old"}, timeout=60)
    assert lora["success"] and lora["data"]["tensors"] == 3, lora
    _error(pickles.call("model.load_model", {"model_id": "checkpoints/garbage"}, timeout=60), "model_load_failed", "weights-only")
    r = pickles.call("model.load_model", {"model_id": "checkpoints/runs-code"}, timeout=60)
    _error(r, "model_load_failed", "weights-only")
    assert not (library.parent / "pwned").exists()  # torch's weights-only unpickler ran nothing


# ---- item 12: garbage model_index.json -------------------------------------------------------------------


@pytest.mark.parametrize("model_id, words", [
    ("index-not-json", ("model_index.json", "JSON")),
    ("index-list", ("model_index.json", "list")),
    ("index-int-class", ("model_index.json", "_class_name", "5")),
])
def test_garbage_model_index_is_model_load_failed(hostile: Worker, model_id: str, words: tuple[str, ...]) -> None:
    for method, data in (
        ("model.load_model", {"model_id": model_id}),
        ("inference.text2img", {**JOB, "model_id": model_id}),
        ("model.get_metadata", {"model_id": model_id}),
    ):
        _error(hostile.call(method, data, timeout=60), "model_load_failed", *words)
    _still_serving(hostile)


# ---- item 13: found, but unreadable --------------------------------------------------------------------


@pytest.mark.parametrize("model_id, why", [
    ("checkpoints/truncated", "truncated"),
    ("checkpoints/empty", "too small"),
    ("checkpoints/bad-header", "header"),
    ("unet/bad", "GGUF"),
])
def test_present_but_unreadable_files_say_so(hostile: Worker, model_id: str, why: str) -> None:
    for method, data in (("inference.text2img", {**JOB, "model_id": model_id}), ("model.load_model", {"model_id": model_id})):
        r = hostile.call(method, data, timeout=60)
        _error(r, "model_load_failed", "was found", "cannot be read", why)
        assert "did you mean" not in r["error"]


def test_a_garbage_lora_is_found_and_unreadable(hostile: Worker) -> None:
    r = hostile.call("model.load_lora", {"model_id": "lora/garbage"}, timeout=60)
    _error(r, "model_load_failed", "was found", "cannot be read")
    r = hostile.call("inference.text2img", {**JOB, "model_id": "tiny-sd15", "loras": [{"name": "lora/garbage", "weight": 0.5}]}, timeout=60)
    _error(r, "model_load_failed", "was found")
    assert r["error_details"][0]["path"] == "data.loras[0]", r


def test_a_pickle_outside_checkpoints_is_unsafe_not_missing(hostile: Worker) -> None:
    for method, data in (("inference.text2img", {**JOB, "model_id": "mystery"}), ("model.load_model", {"model_id": "mystery"})):
        _error(hostile.call(method, data, timeout=60), "unsafe_path", "--allow-pickle")
    hostile.assert_pure_stdout()
