"""The model domain through the real worker: discovery, metadata, caches with budgets, sharing,
RAM → device promotion, the out-of-memory retry, and path / pickle safety."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import Worker


def _perturbed_copy(src: Path, dst: Path, factor: float) -> None:
    """A copy of a tiny model whose UNet differs (every tensor scaled): a third distinct model."""
    shutil.copytree(src, dst)
    unet = dst / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(unet))
    save_file({k: v * factor for k, v in state.items()}, str(unet))


@pytest.fixture(scope="module")
def library(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir as people keep one: checkpoints, a VAE folder, a LoRA, an embedding, a pickle."""
    root = tmp_path_factory.mktemp("library")
    shutil.copytree(models_dir / "tiny-sd15", root / "tiny-sd15")
    shutil.copytree(models_dir / "tiny-sdxl", root / "tiny-sdxl")
    _perturbed_copy(models_dir / "tiny-sd15", root / "checkpoints" / "sd15-b", 1.01)
    _perturbed_copy(models_dir / "tiny-sd15", root / "checkpoints" / "sd15-c", 0.99)
    shutil.copytree(models_dir / "tiny-sdxl" / "vae", root / "vae" / "my-vae")
    from sdworker.tiny import make_tiny_model
    from sdworker.tiny.single_file import make_tiny_vae_single_file

    make_tiny_model("sd15", root / "checkpoints" / "single-sd15.safetensors", single_file=True)
    make_tiny_model("sdxl", root / "checkpoints" / "single-sdxl.safetensors", single_file=True)
    make_tiny_vae_single_file("sdxl", root / "vae" / "sdxl-vae-file.safetensors")
    g = torch.Generator().manual_seed(0)
    lora = {}
    for i, dim in enumerate((768, 768)):
        base = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k{i}"
        lora[f"{base}.lora_down.weight"] = torch.randn(4, dim, generator=g)
        lora[f"{base}.lora_up.weight"] = torch.randn(320, 4, generator=g)
        lora[f"{base}.alpha"] = torch.tensor(4.0)
    (root / "lora").mkdir()
    save_file(lora, str(root / "lora" / "style.safetensors"), metadata={"ss_base_model_version": "sd_v1"})
    (root / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, 768, generator=g)}, str(root / "embeddings" / "badhands.safetensors"))
    (root / "checkpoints" / "old.ckpt").write_bytes(b"\x80\x04not really a pickle")
    return root


@pytest.fixture(scope="module")
def mw(library: Path, tmp_path_factory: pytest.TempPathFactory):
    """A worker over the library with a RAM budget that holds two of the three sd15 models."""
    data = tmp_path_factory.mktemp("mdata")
    w = Worker(["--models-dir", str(library), "--output-dir", str(data / "out"), "--data-dir", str(data), "--ram-budget-mb", "15"])
    yield w
    w.close()


def _pixels(r: dict) -> bytes:
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(r["data"]["images"][0]["base64"]))).convert("RGB").tobytes()


def _by_id(items: list[dict]) -> dict[str, dict]:
    return {i["model_id"]: i for i in items}


def test_discovery_lists_every_kind_with_its_architecture(mw: Worker):
    r = mw.call("model.list_models", {"refresh": True})
    assert r["success"], r
    items = _by_id(r["data"]["items"])
    assert (items["tiny-sdxl"]["kind"], items["tiny-sdxl"]["base_model"], items["tiny-sdxl"]["format"]) == ("checkpoint", "sdxl", "diffusers")
    assert (items["tiny-sd15"]["kind"], items["tiny-sd15"]["base_model"]) == ("checkpoint", "sd_1_5")
    assert items["checkpoints/sd15-b"]["kind"] == "checkpoint"
    assert items["vae/my-vae"]["kind"] == "vae"
    assert (items["lora/style"]["kind"], items["lora/style"]["base_model"]) == ("lora", "sd_1_5")
    assert (items["embeddings/badhands"]["kind"], items["embeddings/badhands"]["base_model"]) == ("embedding", "sd_1_5")
    assert items["checkpoints/old"]["pickle"] is True
    single = items["checkpoints/single-sdxl"]
    assert (single["kind"], single["base_model"], single["format"]) == ("checkpoint", "sdxl", "safetensors")
    assert items["checkpoints/single-sd15"]["base_model"] == "sd_1_5"
    assert items["vae/sdxl-vae-file"]["kind"] == "vae"
    only_loras = mw.call("model.list_models", {"kind": "lora"})["data"]["items"]
    assert [i["model_id"] for i in only_loras] == ["lora/style"]
    found = mw.call("model.search", {"query": "sd15", "kind": "checkpoint"})["data"]["items"]
    assert {i["model_id"] for i in found} == {"tiny-sd15", "checkpoints/sd15-b", "checkpoints/sd15-c", "checkpoints/single-sd15"}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_single_file_generates_what_the_folder_generates(mw: Worker, arch: str):
    req = {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 11}
    folder = mw.call("inference.text2img", {**req, "model_id": f"tiny-{arch}"}, timeout=180)
    single = mw.call("inference.text2img", {**req, "model_id": f"single-{arch}"}, timeout=180)  # the bare name finds it
    assert folder["success"] and single["success"], single
    assert single["data"]["parameters"]["model_id"] == f"checkpoints/single-{arch}"
    assert _pixels(folder) == _pixels(single)
    comps = mw.call("model.get_components", {"model_id": f"checkpoints/single-{arch}"})["data"]["components"]
    assert {"unet", "vae", "text_encoder"} <= {c["name"] for c in comps}


def test_new_files_show_up_without_a_restart(mw: Worker, library: Path):
    extra = library / "lora" / "late.safetensors"
    shutil.copy(library / "lora" / "style.safetensors", extra)
    try:
        ids = {i["model_id"] for i in mw.call("model.list_models", {"refresh": True})["data"]["items"]}
        assert "lora/late" in ids
    finally:
        extra.unlink()


def test_metadata_and_hashes_match_an_independent_computation(mw: Worker, library: Path):
    path = library / "lora" / "style.safetensors"
    r = mw.call("model.get_metadata", {"model_id": "lora/style"})
    assert r["success"], r
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert r["data"]["hashes"]["sha256"] == sha and r["data"]["hashes"]["shorthash"] == sha[:10]
    assert r["data"]["metadata"]["ss_base_model_version"] == "sd_v1"
    # the bare file name finds it too
    assert mw.call("model.get_metadata", {"model_id": "style", "hashes": False})["data"]["kind"] == "lora"


def test_update_metadata_writes_a_sidecar_never_the_model(mw: Worker, library: Path):
    path = library / "lora" / "style.safetensors"
    before = path.read_bytes()
    r = mw.call("model.update_metadata", {"model_id": "lora/style", "metadata": {"notes": "warm colours", "rating": 4}})
    assert r["success"], r
    r = mw.call("model.update_metadata", {"model_id": "lora/style", "metadata": {"rating": 5}})
    assert r["data"]["metadata"] == {"notes": "warm colours", "rating": 5}
    assert path.read_bytes() == before
    assert Path(r["data"]["sidecar_path"]).is_file() and Path(r["data"]["sidecar_path"]).parent == path.parent
    info = mw.call("model.get_model_info", {"model_id": "lora/style"})["data"]
    assert info["user_metadata"]["rating"] == 5


def _entries(w: Worker) -> list[dict]:
    return w.call("model.get_cache_status")["data"]["entries"]


def test_components_are_shared_and_the_budget_evicts_the_least_recently_used(mw: Worker):
    mw.call("model.clear_cache")
    a = mw.call("model.load_model", {"model_id": "tiny-sd15", "device": "ram"}, timeout=120)
    assert a["success"] and a["data"]["loaded_from"] == "disk", a
    b = mw.call("model.load_model", {"model_id": "checkpoints/sd15-b", "device": "ram"}, timeout=120)
    assert b["success"], b
    # b differs only in its UNet: text encoder, tokenizer and VAE are the very same cache entries
    assert b["data"]["components_read"] == 1
    pa, pb = a["data"]["pipeline"]["components"], b["data"]["pipeline"]["components"]
    assert pa["vae"]["key"] == pb["vae"]["key"] and pa["text_encoder"]["key"] == pb["text_encoder"]["key"]
    assert pa["unet"]["key"] != pb["unet"]["key"]
    status = mw.call("model.get_cache_status")["data"]
    vae = next(e for e in status["entries"] if e["key"] == pa["vae"]["key"])
    assert set(vae["model_ids"]) == {"tiny-sd15", "checkpoints/sd15-b"}
    assert status["ram"]["used_mb"] < 2 * 8.0  # two 8.1 MB models in less than twice the memory
    # a third model passes the 15 MB budget: the least recently used UNet (a's) goes
    c = mw.call("model.load_model", {"model_id": "checkpoints/sd15-c", "device": "ram"}, timeout=120)
    assert c["success"], c
    status = mw.call("model.get_cache_status")["data"]
    assert status["ram"]["used_mb"] <= 15.0
    keys = {e["key"] for e in status["entries"]}
    assert pa["unet"]["key"] not in keys and pb["unet"]["key"] in keys and pa["vae"]["key"] in keys
    assert "tiny-sd15" not in {p["model_id"] for p in status["pipelines"]}
    # a cached reload builds from RAM: nothing read from disk
    again = mw.call("model.load_model", {"model_id": "checkpoints/sd15-c", "device": "ram"})
    assert again["data"]["loaded_from"] == "cache" and again["data"]["components_read"] == 0


def test_a_pinned_model_is_never_evicted(mw: Worker):
    mw.call("model.clear_cache")
    sid = "pinned-job"
    mw.send({"type": "inference.text2img", "request_id": sid, "data": {"model_id": "tiny-sd15", "steps": 40, "width": 64, "height": 64, "seed": 1}})
    mw.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == sid, timeout=120)
    running = {e["key"] for e in _entries(mw) if "tiny-sd15" in e["model_ids"] and e["pinned"]}
    assert running, _entries(mw)
    for other in ("checkpoints/sd15-b", "checkpoints/sd15-c"):
        assert mw.call("model.load_model", {"model_id": other, "device": "ram"}, timeout=120)["success"]
    keys = {e["key"] for e in _entries(mw)}
    assert running <= keys  # over budget, yet the running job's weights stayed
    assert mw.call("model.clear_cache", {"model_id": "tiny-sd15"})["data"]["pinned_kept"]
    r = mw.response(sid, timeout=300)
    assert r["success"], r


def test_ram_load_is_promoted_by_the_next_run(mw: Worker):
    mw.call("model.clear_cache")
    assert mw.call("model.load_model", {"model_id": "tiny-sdxl", "device": "ram"}, timeout=120)["data"]["loaded_from"] == "disk"
    r = mw.call("inference.text2img", {"model_id": "tiny-sdxl", "steps": 1, "width": 64, "height": 64}, timeout=120)
    assert r["success"] and r["data"]["performance"]["loaded_from"] == "cache", r


def test_vram_model_status_lists_the_cpu_too(mw: Worker):
    """A CPU worker lists its resident models under device "cpu", in the row shape a GPU has."""
    mw.call("model.clear_cache")
    assert mw.call("model.load_model", {"model_id": "tiny-sd15", "device": "cpu"}, timeout=120)["success"]
    d = mw.call("model.get_vram_model_status")["data"]
    rows = {r["device_id"]: r for r in d["devices"]}
    assert d["devices"][-1]["device_id"] == "cpu" and all(r["device_id"].startswith("cuda:") for r in d["devices"][:-1])
    assert d["cuda_available"] or len(d["devices"]) == 1
    keys = {"device_id", "total_mb", "free_mb", "allocated_mb", "reserved_mb", "budget_mb", "cached_mb", "models", "entries"}
    assert all(set(r) == keys for r in d["devices"])
    cpu = rows["cpu"]
    assert "tiny-sd15" in cpu["models"]
    assert {"unet", "vae", "text_encoder"} <= {e["component"] for e in cpu["entries"] if "tiny-sd15" in e["model_ids"]}
    assert all(e["device"] == "cpu" for e in cpu["entries"])
    assert 0 < cpu["cached_mb"] <= cpu["budget_mb"] == 15.0 and 0 < cpu["allocated_mb"] and 0 < cpu["free_mb"] <= cpu["total_mb"]
    mw.call("model.unload_model", {"model_id": "tiny-sd15"})
    mw.call("model.clear_cache")
    assert "tiny-sd15" not in mw.call("model.get_vram_model_status")["data"]["devices"][-1]["models"]


def test_unload_keep_in_ram_then_reload_from_the_cache(mw: Worker):
    assert mw.call("model.load_model", {"model_id": "tiny-sdxl"}, timeout=120)["success"]
    u = mw.call("model.unload_model", {"model_id": "tiny-sdxl", "keep_in_ram": True})
    assert u["data"]["unloaded"] == ["tiny-sdxl"]
    assert mw.call("model.load_model", {"model_id": "tiny-sdxl"})["data"]["loaded_from"] == "cache"
    u = mw.call("model.unload_model", {"model_id": "tiny-sdxl"})
    assert not [e for e in _entries(mw) if e["model_ids"] == ["tiny-sdxl"]]


def test_component_loads(mw: Worker):
    r = mw.call("model.load_encoder", {"model_id": "tiny-sdxl", "device": "ram"}, timeout=120)
    assert r["success"] and {c["component"] for c in r["data"]["components"]} == {"text_encoder", "text_encoder_2"}
    r = mw.call("model.load_unet", {"model_id": "tiny-sdxl", "device": "cpu"}, timeout=120)
    assert r["success"] and r["data"]["components"][0]["component"] == "unet"
    r = mw.call("model.load_vae", {"model_id": "vae/my-vae"}, timeout=120)
    assert r["success"] and r["data"]["components"][0]["source"].endswith("my-vae")
    r = mw.call("model.load_vae", {"model_id": "vae/sdxl-vae-file"}, timeout=120)
    assert r["success"], r
    r = mw.call("model.load_lora", {"model_id": "lora/style"})
    assert r["success"] and r["data"]["tensors"] == 6
    r = mw.call("model.load_vae", {"model_id": "lora/style"})
    assert r["error_code"] == "validation_error"


def test_compare_vaes_and_benchmark(mw: Worker):
    r = mw.call("model.compare_vaes", {"vae_ids": ["vae/my-vae", "model:tiny-sd15"], "size": 64}, timeout=180)
    assert r["success"], r
    rows = r["data"]["results"]
    assert len(rows) == 2 and all(0 < row["psnr"] < 100 and -1 <= row["ssim"] <= 1 for row in rows)
    assert rows[0]["psnr"] == rows[1]["psnr"]  # same weights (the tiny VAEs differ only in scaling factor)
    b = mw.call("model.benchmark_model", {"model_id": "vae/my-vae", "width": 64, "height": 64}, timeout=180)
    assert b["success"] and b["data"]["decode_ms"] > 0, b
    b = mw.call("model.benchmark_model", {"model_id": "tiny-sd15", "width": 64, "height": 64, "steps": 1, "repeats": 1}, timeout=180)
    assert b["success"] and b["data"]["components_read"] >= 1 and b["data"]["cached_reload_ms"] < b["data"]["cold_load_ms"], b


def test_validate_model_finds_a_truncated_file(mw: Worker, library: Path):
    bad = library / "lora" / "broken.safetensors"
    data = (library / "lora" / "style.safetensors").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    try:
        mw.call("model.list_models", {"refresh": True})
        r = mw.call("model.validate_model", {"model_id": "lora/broken"}, timeout=60)
        assert r["success"] and r["data"]["valid"] is False, r
        ok = mw.call("model.validate_model", {"model_id": "tiny-sd15", "smoke": True}, timeout=120)
        assert ok["data"]["valid"] is True, ok
    finally:
        bad.unlink()


def test_paths_outside_the_roots_and_pickles_are_refused(mw: Worker, library: Path, tmp_path: Path):
    for bad in ("../etc/passwd", "/etc/passwd", "tiny-sd15/../../x"):
        r = mw.call("inference.text2img", {"model_id": bad, "steps": 1})
        assert r["error_code"] == "unsafe_path", (bad, r)
        r = mw.call("model.get_metadata", {"model_id": bad})
        assert r["error_code"] == "unsafe_path", (bad, r)
    outside = tmp_path / "outside"
    shutil.copytree(library / "tiny-sd15", outside)
    link = library / "linked"
    os.symlink(outside, link)
    try:
        r = mw.call("inference.text2img", {"model_id": "linked", "steps": 1})
        assert r["error_code"] == "unsafe_path", r
        ids = {i["model_id"] for i in mw.call("model.list_models", {"refresh": True})["data"]["items"]}
        assert "linked" not in ids
    finally:
        link.unlink()
    r = mw.call("inference.text2img", {"model_id": "checkpoints/old", "steps": 1})
    assert r["error_code"] == "unsafe_path" and "--allow-pickle" in r["error"], r


@pytest.mark.parametrize("drill, ok", [("1", True), ("1:2", False)])
def test_out_of_memory_retries_once_in_low_memory_mode(models_dir: Path, tmp_path: Path, drill: str, ok: bool):
    w = Worker(["--models-dir", str(models_dir), "--output-dir", str(tmp_path)], env={**os.environ, "SDWORKER_FAULT_OOM_AT_STEP": drill})
    try:
        r = w.call("inference.text2img", {"model_id": "tiny-sd15", "steps": 2, "width": 64, "height": 64, "seed": 3}, timeout=120)
        if ok:
            assert r["success"], r
            assert "retried once with attention_slicing" in r["data"]["warnings"][0]
        else:
            assert r["error_code"] == "out_of_memory", r
        assert w.call("system.ping")["success"]
        r = w.call("inference.text2img", {"model_id": "tiny-sd15", "steps": 2, "width": 64, "height": 64, "seed": 3}, timeout=120)
        assert r["success"], r  # the drill is spent; the worker serves on, at full speed again
        w.assert_pure_stdout()
    finally:
        w.close()


def test_optimize_model_switches_memory_modes(mw: Worker):
    assert mw.call("model.load_model", {"model_id": "tiny-sd15"}, timeout=120)["success"]
    r = mw.call("model.optimize_model", {"model_id": "tiny-sd15", "mode": "vae_tiling"})
    assert r["success"] and r["data"]["applied"] == ["vae_tiling"], r
    info = mw.call("inference.get_pipeline_info", {"model_id": "tiny-sd15"})
    assert info["success"]
    r = mw.call("model.optimize_model", {"model_id": "tiny-sd15", "mode": "model_cpu_offload"})
    assert r["error_code"] == "unsupported" and "CUDA" in r["error"], r
    r = mw.call("model.optimize_model", {"model_id": "tiny-sd15", "mode": "auto"})
    assert r["success"] and r["data"]["mode"] in ("none", "attention_slicing"), r
    gen = mw.call("inference.text2img", {"model_id": "tiny-sd15", "steps": 1, "width": 64, "height": 64}, timeout=120)
    assert gen["success"], gen
    mw.call("model.unload_model", {"model_id": "checkpoints/sd15-c"})
    r = mw.call("model.optimize_model", {"model_id": "checkpoints/sd15-c", "mode": "none"})
    assert r["error_code"] == "validation_error" and "not loaded" in r["error"], r
