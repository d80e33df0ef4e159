"""Per-request VAE, SDXL refiner, precision controls, hires fix and save_path safety.

Each feature is checked against plain diffusers doing the same by hand, pixel for pixel, on
the tiny models. The module has its own models dir: the shared one plus a second VAE (perturbed
decoder), an "fp16-safe" VAE and a tiny SDXL refiner built from tiny-sdxl's parts.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoPipelineForImage2Image, DiffusionPipeline, UNet2DConditionModel
from PIL import Image

from conftest import Worker
from sdworker.managers import hires
from sdworker.managers.output import OutputWriter
from sdworker.errors import ValidationFailed
from sdworker.schemas.generation import HiresOptions
from sdworker.tiny.builder import ADDITION_TIME_EMBED_DIM, SDXL_UNET, TEXT_HIDDEN_SIZE, TEXT_PROJECTION_DIM

PROMPT = "a lighthouse at dusk"
BASE = {"model_id": "tiny-sdxl", "prompt": PROMPT, "width": 64, "height": 64, "steps": 4, "guidance_scale": 6.0, "seed": 31}


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def _gen(seed: int = 31) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed)]


def _image(r: dict) -> np.ndarray:
    assert r["success"], r
    return _decode(r["data"]["images"][0]["base64"])


def _make_refiner(src: Path, out: Path) -> None:
    """An SDXL refiner-shaped model: tiny-sdxl's text_encoder_2, tokenizer_2, VAE and scheduler
    (byte-identical copies, so the cache shares them) and a UNet with the refiner's conditioning
    (text_encoder_2's hidden states only; 5 time ids: sizes, crop and the aesthetic score)."""
    out.mkdir()
    for part in ("text_encoder_2", "tokenizer_2", "vae", "scheduler"):
        shutil.copytree(src / part, out / part)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        unet = UNet2DConditionModel(
            **{**SDXL_UNET, "cross_attention_dim": TEXT_HIDDEN_SIZE, "projection_class_embeddings_input_dim": 5 * ADDITION_TIME_EMBED_DIM + TEXT_PROJECTION_DIM}
        )
    unet.save_pretrained(out / "unet")
    index = json.loads((src / "model_index.json").read_text())
    index.update(
        _class_name="StableDiffusionXLImg2ImgPipeline",
        text_encoder=[None, None],
        tokenizer=[None, None],
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


@pytest.fixture(scope="module")
def extras_dir(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extras-models")
    for name in ("tiny-sdxl", "tiny-sd15"):
        shutil.copytree(models_dir / name, root / name)
    _make_refiner(root / "tiny-sdxl", root / "tiny-sdxl-refiner")
    vae = AutoencoderKL.from_pretrained(str(root / "tiny-sdxl" / "vae"))
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(-1.5)
        vae.decoder.conv_out.bias.add_(0.2)
    vae.save_pretrained(root / "vae" / "tiny-vae-alt")
    safe = root / "vae" / "tiny-sdxl-vae-fp16"
    shutil.copytree(root / "vae" / "tiny-vae-alt", safe)
    cfg = json.loads((safe / "config.json").read_text())
    cfg["force_upcast"] = False
    (safe / "config.json").write_text(json.dumps(cfg))
    return root


@pytest.fixture(scope="module")
def w(extras_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("extras-out")
    worker = Worker(["--models-dir", str(extras_dir), "--output-dir", str(out), "--device", "cpu"])
    worker.out = out  # type: ignore[attr-defined]
    yield worker
    worker.kill()


@pytest.fixture(scope="module")
def sdxl(extras_dir: Path):
    pipe = DiffusionPipeline.from_pretrained(str(extras_dir / "tiny-sdxl"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _plain(pipe, **kw) -> np.ndarray:
    return _pixels(pipe(prompt=PROMPT, width=64, height=64, num_inference_steps=4, guidance_scale=6.0, generator=_gen(), **kw).images[0])


# ---- VAE ---------------------------------------------------------------------------------------


def test_request_vae_is_used_for_that_run_only(w, sdxl, extras_dir):
    default = _plain(sdxl)
    r = w.call("inference.text2img", {**BASE, "vae": "tiny-vae-alt"}, timeout=180)
    got = _image(r)
    assert r["data"]["parameters"]["vae"] == "vae/tiny-vae-alt" and "VAE: vae/tiny-vae-alt" in r["data"]["images"][0]["infotext"]
    alt = AutoencoderKL.from_pretrained(str(extras_dir / "vae" / "tiny-vae-alt"))
    other = DiffusionPipeline.from_pretrained(str(extras_dir / "tiny-sdxl"), vae=alt)
    other.set_progress_bar_config(disable=True)
    assert not np.array_equal(got, default)
    assert np.array_equal(got, _plain(other))
    # the next request without a vae gets the model's own again
    r = w.call("inference.text2img", BASE, timeout=180)
    assert np.array_equal(_image(r), default) and r["data"]["parameters"]["vae"] == "model"
    entries = w.call("model.get_cache_status")["data"]["entries"]
    vae_entry = next(e for e in entries if "vae/tiny-vae-alt" in e["model_ids"])
    assert vae_entry["pinned"] is False


def test_vae_errors(w):
    r = w.call("inference.text2img", {**BASE, "vae": "tiny-vae-alz"})
    assert r["error_code"] == "model_not_found" and "vae/tiny-vae-alt" in r["error"]
    r = w.call("inference.text2img", {**BASE, "vae": "tiny-sd15"})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.vae" and "not a VAE" in r["error"]


def test_fp16_on_sdxl_prefers_an_fp16_safe_vae(w):
    r = w.call("inference.text2img", {**BASE, "steps": 2, "precision": {"dtype": "fp16"}}, timeout=180)
    assert r["success"], r
    d = r["data"]
    assert d["parameters"]["vae"] == "vae/tiny-sdxl-vae-fp16" and d["parameters"]["dtype"] == "fp16"
    assert any("fp16-safe VAE" in x for x in d["warnings"]) and any("fp16 on a CPU" in x for x in d["warnings"])
    r = w.call("inference.text2img", {**BASE, "steps": 2, "precision": {"dtype": "fp16"}, "vae": "model"}, timeout=180)
    assert r["success"] and r["data"]["parameters"]["vae"] == "model"
    assert not any("fp16-safe" in x for x in r["data"]["warnings"])


# ---- precision ---------------------------------------------------------------------------------


def test_bf16_on_cpu_and_memory_options(w, sdxl):
    r = w.call("inference.text2img", {**BASE, "steps": 2, "precision": {"dtype": "bfloat16"}}, timeout=180)
    assert r["success"], r
    assert r["data"]["parameters"]["dtype"] == "bf16" and r["data"]["images"][0]["width"] == 64
    default = _image(w.call("inference.text2img", BASE, timeout=180))
    opts = {"attention_slicing": True, "vae_slicing": True, "vae_tiling": True}
    sliced = _image(w.call("inference.text2img", {**BASE, "num_images": 1, "precision": opts}, timeout=180))
    # Sliced attention is other arithmetic (bmm + softmax per slice instead of SDPA); tiling does
    # nothing below the VAE's tile size. Random tiny weights amplify rounding, so: close, not equal.
    assert np.abs(sliced.astype(int) - default.astype(int)).max() <= 8
    # the shared UNet and VAE got their own settings back
    assert np.array_equal(_image(w.call("inference.text2img", BASE, timeout=180)), default)


def test_cpu_offload_needs_cuda(w):
    r = w.call("inference.text2img", {**BASE, "precision": {"cpu_offload": "model"}})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.precision.cpu_offload"
    assert "CUDA" in r["error"]


# ---- refiner -----------------------------------------------------------------------------------


def test_refiner_equals_diffusers_two_stage_and_shares_components(w, sdxl, extras_dir):
    req = {**BASE, "refiner": {"model": "tiny-sdxl-refiner", "switch_at": 0.75}}
    r = w.call("inference.text2img", req, timeout=180)
    got = _image(r)
    p = r["data"]["parameters"]
    assert p["refiner"] == {"model": "tiny-sdxl-refiner", "switch_at": 0.75}
    assert "Refiner: tiny-sdxl-refiner, Refiner switch at: 0.75" in r["data"]["images"][0]["infotext"]
    refiner = DiffusionPipeline.from_pretrained(str(extras_dir / "tiny-sdxl-refiner"))
    refiner.set_progress_bar_config(disable=True)
    g = _gen()
    latents = sdxl(prompt=PROMPT, width=64, height=64, num_inference_steps=4, guidance_scale=6.0, generator=g, denoising_end=0.75, output_type="latent").images
    expected = refiner(prompt=PROMPT, image=latents, num_inference_steps=4, guidance_scale=6.0, generator=g, denoising_start=0.75).images[0]
    assert np.array_equal(got, _pixels(expected))
    status = w.call("model.get_cache_status")["data"]
    pipelines = {lp["model_id"]: lp["components"] for lp in status["pipelines"] if lp["dtype"] == "fp32"}
    base, ref = pipelines["tiny-sdxl"], pipelines["tiny-sdxl-refiner"]
    assert ref["text_encoder_2"]["key"] == base["text_encoder_2"]["key"] and ref["vae"]["key"] == base["vae"]["key"]
    assert ref["unet"]["key"] != base["unet"]["key"]


def test_refiner_validation(w):
    r = w.call("inference.text2img", {**BASE, "model_id": "tiny-sd15", "refiner": {"model": "tiny-sdxl-refiner"}})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.refiner"
    for bad in (0.0, 1.0, 1.5):
        r = w.call("inference.text2img", {**BASE, "refiner": {"model": "tiny-sdxl-refiner", "switch_at": bad}})
        assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.refiner.switch_at", bad
    r = w.call("inference.text2img", {**BASE, "refiner": {"model": "tiny-sd15"}})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.refiner.model"
    # the nested C# shape's Model.Refiner lands in the same field
    ok = w.call("inference.validate_request", {"Model": {"Base": "tiny-sdxl", "Refiner": "tiny-sdxl-refiner"}, "Conditioning": {"Prompt": "x"}})["data"]
    assert ok["valid"], ok
    assert ok["normalized"]["refiner"] == {"model": "tiny-sdxl-refiner", "switch_at": 0.8}


# ---- hires fix ---------------------------------------------------------------------------------


def test_hires_latent_equals_two_passes_by_hand(w, sdxl):
    r = w.call("inference.text2img", {**BASE, "hires": {"scale": 2, "upscaler": "Latent", "denoise": 0.5}}, timeout=180)
    got = _image(r)
    im = r["data"]["images"][0]
    assert (im["width"], im["height"]) == (128, 128) and got.shape == (128, 128, 3)
    assert "Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent" in im["infotext"] and "Denoising strength: 0.5" in im["infotext"]
    assert "Size: 64x64" in im["infotext"] and r["data"]["parameters"]["hires"]["width"] == 128
    low = sdxl(prompt=PROMPT, width=64, height=64, num_inference_steps=4, guidance_scale=6.0, generator=_gen(), output_type="latent").images
    up = torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear")
    second = AutoPipelineForImage2Image.from_pipe(sdxl)
    # A1111's "Hires steps": 4 second-pass steps run at denoise 0.5, so diffusers is asked for 8 (int(8 x 0.5) = 4)
    expected = second(prompt=PROMPT, image=up, strength=0.5, num_inference_steps=8, guidance_scale=6.0, generator=_gen()).images[0]
    assert np.array_equal(got, _pixels(expected))


def test_hires_lanczos_on_sd15_equals_two_passes_by_hand(w, extras_dir):
    req = {**BASE, "model_id": "tiny-sd15", "hires": {"upscaler": "lanczos", "width": 96, "steps": 3, "denoise": 0.6}}
    r = w.call("inference.text2img", req, timeout=180)
    got = _image(r)
    assert got.shape == (96, 96, 3) and "Hires resize: 96x96" in r["data"]["images"][0]["infotext"]
    pipe = DiffusionPipeline.from_pretrained(str(extras_dir / "tiny-sd15"), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    low = pipe(prompt=PROMPT, width=64, height=64, num_inference_steps=4, guidance_scale=6.0, generator=_gen()).images[0]
    up = low.resize((96, 96), Image.Resampling.LANCZOS)
    second = AutoPipelineForImage2Image.from_pipe(pipe)
    expected = second(prompt=PROMPT, image=up, strength=0.6, num_inference_steps=5, guidance_scale=6.0, generator=_gen()).images[0]  # 3 run
    assert np.array_equal(got, _pixels(expected))


def test_hires_validation_and_sizes(w):
    r = w.call("inference.text2img", {**BASE, "width": 1024, "height": 1024, "hires": {"scale": 4}})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.hires.scale"
    r = w.call("inference.img2img", {**BASE, "init_image": "x.png", "hires": {}})
    assert r["error_code"] in ("validation_error", "unsafe_path")
    hp = hires.plan(HiresOptions(scale=1.5), 100, 64, 20)
    assert (hp.width, hp.height, hp.steps, hp.upscaler) == (144, 96, 20, "latent")
    hp = hires.plan(HiresOptions(height=128), 96, 64, 20)
    assert (hp.width, hp.height) == (192, 128)
    assert HiresOptions(upscaler="Latent (nearest-exact)").upscaler == "latent_nearest_exact"


# ---- save_path ---------------------------------------------------------------------------------


def test_save_path_never_overwrites_unless_asked(w):
    req = {**BASE, "steps": 1, "output": {"save_path": "keep/one.png"}}
    first = w.call("inference.text2img", req, timeout=180)
    assert first["success"], first
    path = Path(first["data"]["images"][0]["path"])
    before = path.read_bytes()
    r = w.call("inference.text2img", {**req, "seed": 99})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.output.save_path"
    assert path.read_bytes() == before
    r = w.call("inference.text2img", {**req, "seed": 99, "output": {"save_path": "keep/one.png", "overwrite": True}}, timeout=180)
    assert r["success"], r
    assert path.read_bytes() != before


def test_write_refuses_a_file_that_appeared_after_planning(tmp_path):
    writer = OutputWriter(tmp_path)
    [target] = writer.plan("late.png", "s", 1, "png")
    target.write_bytes(b"someone else's")
    with pytest.raises(ValidationFailed) as err:
        writer.write_atomic(target, b"ours", replace=False)
    assert err.value.details[0]["path"] == "output.save_path"
    assert target.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.png"]  # no temp file left
    with pytest.raises(ValidationFailed):
        writer.plan("late.png", "s", 1, "png")
    assert writer.plan("late.png", "s", 1, "png", overwrite=True) == [target]
