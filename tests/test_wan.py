"""Wan 2.1 / 2.2 video: the tiny models, the family's checks, mp4 output, and parity with plain diffusers.

Parity compares the lossless frames (output.frames, PNG) with WanPipeline's own output for the same
components, settings and CPU generators; the mp4 is lossy, so it is checked by decoding: frame
count, size and fps.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from diffusers import DiffusionPipeline, WanImageToVideoPipeline, WanPipeline
from PIL import Image

from conftest import png_b64 as _png_b64, cpu_gens as _gens, load_pipes, family_worker, tiny_models_dir
from sdworker.families import for_base_model
from sdworker.families.wan import WanFamily, read_model, sampler_choice, wan_base
from sdworker.managers import video_out
from sdworker.managers.locator import ModelLocator, ModelRef
from sdworker.models._folder import detect_diffusers_folder
from sdworker.errors import ValidationFailed
from sdworker.schemas.video import VideoRequest
from sdworker.store.presets import detect_base_model
from sdworker.families.wan.tiny import make_tiny_wan

PROMPT = "a photo of a small red house by a lake"
W21, W22, I2V22, I2V21, TI2V, SD15 = "tiny-wan21", "tiny-wan22", "tiny-wan22-i2v", "tiny-wan21-i2v", "tiny-wan22-ti2v", "tiny-sd15"
WAN = WanFamily()
ROOT = Path(__file__).resolve().parents[1]
#: the smallest video the tiny models make: 64x64, 9 frames (3 latent frames of 8x8)
SMALL = {"width": 64, "height": 64, "num_frames": 9}


def _png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _uint8(video: np.ndarray) -> np.ndarray:
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Overrides conftest's: the tiny Wan models, and one SD model to be refused."""
    models = {W21: "wan21", W22: "wan22", I2V22: "wan22-i2v", I2V21: "wan21-i2v", TI2V: "wan22-ti2v", SD15: "sd15"}
    return tiny_models_dir(tmp_path_factory, "wan", models)


@pytest.fixture(scope="module")
def pipes(models_dir: Path) -> dict[str, DiffusionPipeline]:
    return load_pipes(models_dir, (W21, W22, I2V22, I2V21, TI2V))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wan-out")


@pytest.fixture(scope="module")
def wan_worker(models_dir: Path, out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    w = family_worker(models_dir, tmp_path_factory, "wan", out_dir)
    yield w
    w.kill()


@pytest.fixture(scope="module")
def first_frame() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def _ref(models_dir: Path, name: str) -> ModelRef:
    return ModelLocator([models_dir]).resolve(name)


def _req(**data) -> VideoRequest:
    return VideoRequest.model_validate({"prompt": PROMPT, **data})


def _paths(problems: list[dict[str, str]]) -> list[str]:
    return [p["path"] for p in problems]


# ---- the tiny models ------------------------------------------------------------------------------


def test_tiny_wan_models(pipes):
    t2v, two, i2v, i2v21 = pipes[W21], pipes[W22], pipes[I2V22], pipes[I2V21]
    assert type(t2v) is WanPipeline and type(two) is WanPipeline
    assert type(i2v) is WanImageToVideoPipeline and type(i2v21) is WanImageToVideoPipeline
    assert t2v.transformer_2 is None and t2v.config.boundary_ratio is None
    assert two.transformer_2 is not None and two.config.boundary_ratio == 0.875
    assert i2v.transformer.config.in_channels == 36 and i2v.image_encoder is None and i2v.config.boundary_ratio == 0.9
    assert i2v21.image_encoder is not None and i2v21.transformer.config.image_dim == i2v21.image_encoder.config.hidden_size
    assert (t2v.vae_scale_factor_spatial, t2v.vae_scale_factor_temporal) == (8, 4)  # the real Wan VAE's factors
    assert type(t2v.scheduler).__name__ == "UniPCMultistepScheduler" and t2v.scheduler.config.use_flow_sigmas


def test_tiny_wan_build_is_deterministic(models_dir, tmp_path):
    again = make_tiny_wan("wan22", tmp_path / "again")
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(models_dir / W22) for p in (models_dir / W22).rglob("*") if p.is_file())
    for rel in files:
        assert (again / rel).read_bytes() == (models_dir / W22 / rel).read_bytes(), rel


# ---- detection ------------------------------------------------------------------------------------


def test_base_model_detection(models_dir):
    expected = {W21: "wan_2_1", W22: "wan_2_2", I2V22: "wan_2_2", I2V21: "wan_2_1", TI2V: "wan_2_2"}
    for name, base in expected.items():
        ref = _ref(models_dir, name)
        assert ref.base_model == base, name  # the locator (generation)
        assert detect_diffusers_folder(models_dir / name).base_model == base, name  # discovery
        assert detect_base_model(ref) == base, name  # presets
    assert wan_base({"expand_timesteps": True}) == "wan_2_2"  # TI2V-5B: one transformer, Wan 2.2 VAE
    assert wan_base({}, "Wan2.2-Fun-model") == "wan_2_2" and wan_base({}, "wan2.1-t2v") == "wan_2_1"


def test_single_file_transformer_detection(models_dir):
    """A bare Wan transformer file (diffusers or original key names): wan_2_1 by shape, 2.2 by TI2V's 48 channels or the name."""
    from safetensors import safe_open

    from sdworker.models.detect import detect

    def shapes(name: str) -> dict[str, tuple[int, ...]]:
        with safe_open(str(models_dir / name / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    found = detect(shapes(W21), {}, "wan_t2v.safetensors")
    assert (found.kind, found.base_model, found.details["family"]) == ("unet", "wan_2_1", "wan")
    assert detect(shapes(W21), {}, "wan2.2_t2v_low_noise_14B.safetensors").base_model == "wan_2_2"
    assert detect(shapes(TI2V), {}, "x.safetensors").base_model == "wan_2_2"
    original = {"model.diffusion_model.patch_embedding.weight": (5120, 36, 1, 2, 2), "model.diffusion_model.blocks.0.self_attn.q.weight": (5120, 5120)}
    found = detect(original, {}, "wan2.1_i2v_720p_14B.safetensors")
    assert found.base_model == "wan_2_1" and found.details["layout"] == "original" and found.details["image_to_video"]


def test_registry_maps_wan_bases():
    assert for_base_model("wan_2_1").name == "wan" and for_base_model("wan_2_2").name == "wan"


def test_model_facts_from_configs(models_dir):
    m21, m22, i2v, ti2v = (read_model(_ref(models_dir, n)) for n in (W21, W22, I2V22, TI2V))
    assert (m21.size_multiple, m21.temporal, m21.two_experts, m21.modes()) == (16, 4, False, ("text2video",))
    assert (m22.two_experts, m22.boundary_ratio) == (True, 0.875)
    assert i2v.modes() == ("img2video",) and i2v.image_to_video
    assert ti2v.modes() == ("text2video", "img2video") and ti2v.expand_timesteps and ti2v.size_multiple == 32  # VAE 16x, patch 2


# ---- the family, in-process -------------------------------------------------------------------------


def test_defaults(models_dir):
    c = WAN.check(_req(), "text2video", _ref(models_dir, W21))
    assert not c.problems and not c.warnings and (c.req.steps, c.req.guidance_scale) == (50, 5.0)
    c = WAN.check(_req(steps=3), "text2video", _ref(models_dir, W22))
    assert (c.req.steps, c.req.guidance_scale) == (3, 4.0)


@pytest.mark.parametrize(
    "data, path",
    [
        ({"num_frames": 80}, "data.num_frames"),
        ({"num_frames": 8}, "data.num_frames"),
        ({"width": 1000}, "data.width"),
        ({"height": 72}, "data.height"),
        ({"guidance_scale_2": 3.0}, "data.guidance_scale_2"),
        ({"clip_skip": 2}, "data.clip_skip"),
        ({"loras": [{"name": "x"}]}, "data.loras"),
        ({"prompt": "a house <lora:x:0.5>"}, "data.prompt"),
        ({"hires": {"scale": 2}}, "data.hires"),
        ({"refiner": "r"}, "data.refiner"),
        ({"vae": "some-vae"}, "data.vae"),
        ({"sampler": "DPM++ 2M Karras"}, "data.sampler"),
        ({"prompt_syntax": "compel"}, "data.prompt_syntax"),
        ({"true_cfg_scale": 3.0}, "data.true_cfg_scale"),
        ({"init_image": "abc"}, "data.init_image"),
    ],
)
def test_refusals(models_dir, data, path):
    c = WAN.check(_req(**data), "text2video", _ref(models_dir, W21))
    assert _paths(c.problems) == [path], c.problems


def test_valid_video_sizes_and_frames(models_dir):
    ref = _ref(models_dir, W22)
    for data in ({"num_frames": 81, "width": 832, "height": 480}, {"num_frames": 1}, {"num_frames": 5, "width": 1280, "height": 720},
                 {"guidance_scale_2": 3.0}):
        assert not WAN.check(_req(**data), "text2video", ref).problems, data
    message = WAN.check(_req(num_frames=80), "text2video", ref).problems[0]["message"]
    assert "4k+1" in message and "77 or 81" in message


def test_modes_follow_the_model(models_dir):
    t2v, i2v = _ref(models_dir, W21), _ref(models_dir, I2V22)
    assert _paths(WAN.check(_req(init_image="x"), "img2video", t2v).problems) == ["data.model_id"]
    assert _paths(WAN.check(_req(), "text2video", i2v).problems) == ["data.model_id"]
    assert _paths(WAN.check(_req(), "img2video", i2v).problems) == ["data.init_image"]
    assert not WAN.check(_req(init_image="x"), "img2video", i2v).problems
    image_mode = WAN.check(_req(), "text2img", t2v).problems
    assert _paths(image_mode) == ["data.model_id"] and "inference.text2video" in image_mode[0]["message"]


def test_samplers(models_dir):
    ref = _ref(models_dir, W21)
    for data in ({"sampler": "uni_pc", "scheduler": "simple"}, {"sampler": "euler"}, {"scheduler": "UniPCMultistepScheduler"},
                 {"scheduler": "normal"}, {"sampler": "FlowMatchEulerDiscreteScheduler"}):
        assert not WAN.check(_req(**data), "text2video", ref).problems, data
    assert sampler_choice(_req(sampler="euler", scheduler="simple")).class_name == "FlowMatchEulerDiscreteScheduler"
    assert sampler_choice(_req(scheduler="normal")) is None
    assert _paths(WAN.check(_req(sampler="euler", scheduler="karras"), "text2video", ref).problems) == ["data.scheduler"]


def test_build_scheduler_shift():
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from sdworker.families.wan import SAMPLERS, build_scheduler
    from sdworker.families.wan.tiny import SCHEDULER

    own = build_scheduler(None, UniPCMultistepScheduler, SCHEDULER)
    assert type(own) is UniPCMultistepScheduler and own.config.flow_shift == 3.0
    assert build_scheduler(None, UniPCMultistepScheduler, SCHEDULER, 5.0).config.flow_shift == 5.0
    euler = build_scheduler(SAMPLERS["euler"], UniPCMultistepScheduler, SCHEDULER)
    assert type(euler) is FlowMatchEulerDiscreteScheduler and euler.config.shift == 3.0
    back = build_scheduler(SAMPLERS["uni_pc"], FlowMatchEulerDiscreteScheduler, {"shift": 7.0})
    assert type(back) is UniPCMultistepScheduler and back.config.flow_shift == 7.0 and back.config.use_flow_sigmas


def test_weighted_prompt_becomes_plain_text(models_dir):
    c = WAN.check(_req(prompt="a (red:1.3) house"), "text2video", _ref(models_dir, W21))
    assert not c.problems and c.req.prompt == "a red house" and any("no A1111 weighting" in w for w in c.warnings)


def test_call_kwargs(models_dir):
    ref = _ref(models_dir, W22)
    c = WAN.check(_req(guidance_scale_2=2.5, num_frames=9, negative_prompt="blurry"), "text2video", ref)
    plan = SimpleNamespace(mode="text2video", width=64, height=64, ref=ref)
    assert WAN.call_kwargs(c.req, plan) == {"guidance_scale": 4.0, "guidance_scale_2": 2.5, "num_frames": 9, "max_sequence_length": 512}
    assert WAN.prompt_kwargs(None, c.req) == {"prompt": PROMPT, "negative_prompt": "blurry"}
    assert WAN.effective(c.req, plan)["boundary_ratio"] == 0.875


def test_video_request_schema():
    r = _req(image="abc", video_fps=8, num_videos=2, output={"frames": True})
    assert (r.init_image, r.fps, r.num_images, r.output.format, r.output.frames) == ("abc", 8, 2, "mp4", True)
    r = VideoRequest.model_validate({"prompt": "x", "parameters": {"num_frames": 9, "guidance_scale_2": 3}})
    assert (r.num_frames, r.guidance_scale_2) == (9, 3.0)
    with pytest.raises(Exception):
        _req(output={"format": "png"})
    with pytest.raises(ValidationFailed):
        _req(image="a", init_image="b")


# ---- mp4 ----------------------------------------------------------------------------------------------


def test_mp4_decodes_to_frames_size_and_fps(tmp_path):
    import imageio.v3 as iio

    frames = np.random.default_rng(0).integers(0, 256, (9, 48, 80, 3), dtype=np.uint8)
    data = video_out.encode_mp4(frames, fps=12)
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    decoded = iio.imread(path, plugin="FFMPEG")
    assert decoded.shape == (9, 48, 80, 3)
    assert iio.immeta(path, plugin="FFMPEG")["fps"] == 12


def test_save_paths(tmp_path):
    (tmp_path / "taken.mp4").write_bytes(b"x")
    assert video_out.plan_paths(tmp_path, None, "s1", 2) == [tmp_path / "s1-0.mp4", tmp_path / "s1-1.mp4"]
    assert video_out.plan_paths(tmp_path, "clips/a", "s1", 1) == [tmp_path / "clips" / "a.mp4"]
    assert video_out.plan_paths(None, None, "s1", 1) == [None]
    with pytest.raises(ValidationFailed):
        video_out.plan_paths(tmp_path, "taken.mp4", "s1", 1)
    assert video_out.plan_paths(tmp_path, "taken.mp4", "s1", 1, overwrite=True) == [tmp_path / "taken.mp4"]
    with pytest.raises(ValidationFailed):
        video_out.plan_paths(tmp_path, "a.png", "s1", 1)


# ---- through the worker ----------------------------------------------------------------------------------


def _mp4_facts(b64: str, tmp: Path) -> tuple[tuple[int, ...], float]:
    import imageio.v3 as iio

    path = tmp / f"check-{os.getpid()}-{len(b64)}.mp4"
    path.write_bytes(base64.b64decode(b64))
    return iio.imread(path, plugin="FFMPEG").shape, iio.immeta(path, plugin="FFMPEG")["fps"]


def test_list_models_and_capabilities(wan_worker):
    r = wan_worker.call("model.list_models", {"refresh": True})
    assert r["success"], r
    bases = {i["model_id"]: i["base_model"] for i in r["data"]["items"]}
    assert {k: v for k, v in bases.items() if k != SD15} == {W21: "wan_2_1", W22: "wan_2_2", I2V22: "wan_2_2", I2V21: "wan_2_1", TI2V: "wan_2_2"}
    types = wan_worker.call("inference.get_supported_types")["data"]["supported_types"]
    assert {"text2video", "img2video"} <= set(types)
    assert {"inference.text2video", "inference.img2video"} <= set(wan_worker.ready["data"]["methods"])


def test_text2video_equals_diffusers(wan_worker, pipes, out_dir, tmp_path):
    req = {"model_id": W21, "prompt": PROMPT, **SMALL, "steps": 2, "seed": 1234, "fps": 8, "output": {"frames": True}}
    r = wan_worker.call("inference.text2video", req, request_id="v-t2v", timeout=180)
    assert r["success"], r
    data = r["data"]
    video = data["videos"][0]
    assert (video["index"], video["seed"], video["format"], video["fps"], video["num_frames"]) == (0, 1234, "mp4", 8, 9)
    assert (video["width"], video["height"]) == (64, 64)
    params = data["parameters"]
    assert (params["base_model"], params["guidance_scale"], params["num_frames"], params["fps"]) == ("wan_2_1", 5.0, 9, 8)
    expected = _uint8(pipes[W21](prompt=PROMPT, **SMALL, num_inference_steps=2, generator=_gens(1234), output_type="np").frames[0])
    got = np.stack([_png(f) for f in video["frames"]])
    assert got.shape == expected.shape == (9, 64, 64, 3)
    assert np.array_equal(got, expected)
    assert np.array_equal(_png(video["poster"]), expected[0])
    # the mp4 decodes to the requested frame count, size and fps; saved under --output-dir as <session>-0.mp4
    shape, fps = _mp4_facts(video["base64"], tmp_path)
    assert shape == (9, 64, 64, 3) and fps == 8
    assert Path(video["path"]) == out_dir / "v-t2v-0.mp4" and Path(video["path"]).read_bytes() == base64.b64decode(video["base64"])
    # progress per step
    steps = [e["data"]["step"] for e in wan_worker.events("v-t2v", "progress")]
    assert steps and steps[-1] == 2 and all(e["data"]["total_steps"] == 2 for e in wan_worker.events("v-t2v", "progress"))


def test_two_experts_with_guidance_scale_2_equal_diffusers(wan_worker, pipes):
    req = {"model_id": W22, "prompt": PROMPT, "negative_prompt": "blurry", **SMALL, "steps": 4, "seed": 7,
           "guidance_scale": 4.5, "guidance_scale_2": 2.0, "num_images": 2, "output": {"frames": True, "return_base64": False}}
    r = wan_worker.call("inference.text2video", req, timeout=240)
    assert r["success"], r
    data = r["data"]
    assert (data["parameters"]["guidance_scale_2"], data["parameters"]["boundary_ratio"]) == (2.0, 0.875)
    assert [v["seed"] for v in data["videos"]] == [7, 8] and "base64" not in data["videos"][0]
    pipe = pipes[W22]
    timesteps = []
    pipe_out = pipe(
        prompt=PROMPT, negative_prompt="blurry", **SMALL, num_inference_steps=4, guidance_scale=4.5, guidance_scale_2=2.0,
        num_videos_per_prompt=2, generator=_gens(7, 2), output_type="np",
        callback_on_step_end=lambda p, i, t, kw: (timesteps.append(float(t)), kw)[1],
    ).frames
    assert max(timesteps) >= 875 > min(timesteps)  # both experts ran
    for video, expected in zip(data["videos"], pipe_out):
        assert np.array_equal(np.stack([_png(f) for f in video["frames"]]), _uint8(expected))


def test_img2video_equals_diffusers(wan_worker, pipes, first_frame):
    for name in (I2V22, I2V21):
        req = {"model_id": name, "prompt": PROMPT, "image": _png_b64(first_frame), **SMALL, "steps": 2, "seed": 11, "guidance_scale": 3.5,
               "output": {"frames": True}}
        r = wan_worker.call("inference.img2video", req, timeout=240)
        assert r["success"], (name, r)
        expected = pipes[name](
            image=first_frame, prompt=PROMPT, **SMALL, num_inference_steps=2, guidance_scale=3.5, generator=_gens(11), output_type="np"
        ).frames[0]
        got = np.stack([_png(f) for f in r["data"]["videos"][0]["frames"]])
        assert np.array_equal(got, _uint8(expected)), name


def test_ti2v_runs_both_modes_equal_to_diffusers(wan_worker, pipes, first_frame):
    """Wan 2.2 TI2V-5B layout (expand_timesteps, 48-channel VAE): one transformer for text and image to video."""
    common = {"model_id": TI2V, "prompt": PROMPT, **SMALL, "steps": 2, "seed": 5, "guidance_scale": 3.0, "output": {"frames": True}}
    pipe = pipes[TI2V]
    r = wan_worker.call("inference.text2video", common, timeout=240)
    assert r["success"], r
    expected = pipe(prompt=PROMPT, **SMALL, num_inference_steps=2, guidance_scale=3.0, generator=_gens(5), output_type="np").frames[0]
    assert np.array_equal(np.stack([_png(f) for f in r["data"]["videos"][0]["frames"]]), _uint8(expected))
    r = wan_worker.call("inference.img2video", {**common, "image": _png_b64(first_frame)}, timeout=240)
    assert r["success"], r
    i2v = WanImageToVideoPipeline(**pipe.components, boundary_ratio=None, expand_timesteps=True)
    i2v.set_progress_bar_config(disable=True)
    expected = i2v(image=first_frame, prompt=PROMPT, **SMALL, num_inference_steps=2, guidance_scale=3.0, generator=_gens(5), output_type="np").frames[0]
    assert np.array_equal(np.stack([_png(f) for f in r["data"]["videos"][0]["frames"]]), _uint8(expected))
    bad = wan_worker.call("inference.text2video", {**common, "width": 80})
    assert bad["error_code"] == "validation_error" and "multiple of 32" in bad["error"], bad


def test_preset_fills_video_fields(wan_worker):
    r = wan_worker.call("inference.validate_request", {"method": "inference.text2video", "request": {"model_id": W22, "prompt": "x", "preset": "speed"}})
    assert r["success"] and r["data"]["valid"], r
    n = r["data"]["normalized"]
    assert (n["width"], n["height"], n["num_frames"], n["fps"], n["steps"], n["guidance_scale"], n["guidance_scale_2"]) == (832, 480, 81, 16, 20, 3.5, 3.5)
    assert n["scheduler"] == "euler" and n["flow_shift"] == 8.0  # the built-in's model_specific_params.shift
    own = wan_worker.call("inference.validate_request", {"method": "inference.text2video", "request": {"model_id": W22, "prompt": "x", "preset": "speed", "flow_shift": 2}})
    assert own["data"]["normalized"]["flow_shift"] == 2.0


def test_euler_with_flow_shift_equals_diffusers(wan_worker, pipes):
    from diffusers import FlowMatchEulerDiscreteScheduler

    req = {"model_id": W21, "prompt": PROMPT, **SMALL, "steps": 3, "seed": 4, "sampler": "euler", "scheduler": "simple", "flow_shift": 5.0,
           "output": {"frames": True}}
    r = wan_worker.call("inference.text2video", req, timeout=180)
    assert r["success"], r
    params = r["data"]["parameters"]
    assert (params["scheduler"], params["flow_shift"], params["sampler"]) == ("FlowMatchEulerDiscreteScheduler", 5.0, "euler")
    pipe = WanPipeline(**{**pipes[W21].components, "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0)})
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt=PROMPT, **SMALL, num_inference_steps=3, generator=_gens(4), output_type="np").frames[0]
    assert np.array_equal(np.stack([_png(f) for f in r["data"]["videos"][0]["frames"]]), _uint8(expected))


def test_img2video_size_from_the_image(wan_worker, first_frame):
    image = first_frame.resize((80, 72))  # -> 80x64: rounded down to multiples of 16
    r = wan_worker.call("inference.validate_request", {"method": "inference.img2video", "request": {"model_id": I2V22, "prompt": "x", "image": _png_b64(image)}})
    assert r["success"] and r["data"]["valid"], r
    assert (r["data"]["normalized"]["width"], r["data"]["normalized"]["height"]) == (80, 64)


@pytest.mark.parametrize(
    "method, extra, path",
    [
        ("inference.text2video", {"model_id": W21, "num_frames": 80}, "data.num_frames"),
        ("inference.text2video", {"model_id": W21, "width": 1000}, "data.width"),
        ("inference.text2video", {"model_id": W21, "guidance_scale_2": 3.0}, "data.guidance_scale_2"),
        ("inference.text2video", {"model_id": SD15}, "data.model_id"),
        ("inference.text2video", {"model_id": I2V22}, "data.model_id"),
        ("inference.img2video", {"model_id": I2V22}, "data.init_image"),
        ("inference.img2video", {"model_id": W21, "image": "aGVsbG8="}, "data.model_id"),
        ("inference.text2img", {"model_id": W21}, "data.model_id"),
        ("inference.text2video", {"model_id": W21, "output": {"save_path": "../x.mp4"}}, "data.output.save_path"),
    ],
)
def test_worker_validation_errors(wan_worker, method, extra, path):
    r = wan_worker.call(method, {"prompt": "x", "steps": 2, **extra})
    assert not r["success"] and r["error_code"] in ("validation_error", "unsafe_path"), r
    assert path in [d["path"] for d in r["error_details"]], r


def test_jsonrpc_camel_case_video(wan_worker):
    """A stock JSON-RPC client with camelCase params (GuidanceScale2 becomes guidance_scale2, an alias)."""
    params = {"modelId": W22, "prompt": "x", "width": 64, "height": 64, "numFrames": 5, "steps": 1, "seed": 3, "GuidanceScale2": 2.5, "videoFps": 6}
    wan_worker.send({"jsonrpc": "2.0", "id": 77, "method": "inference.text2video", "params": params})
    r = wan_worker.wait_for(lambda m: isinstance(m, dict) and m.get("id") == 77, timeout=120)
    assert "result" in r, r
    video = r["result"]["videos"][0]
    assert (video["num_frames"], video["fps"], r["result"]["parameters"]["guidance_scale_2"]) == (5, 6, 2.5)


def test_validate_request_plans_videos(wan_worker):
    ok = wan_worker.call("inference.validate_request", {"method": "inference.text2video", "request": {"model_id": W22, "prompt": "x", **SMALL, "guidance_scale_2": 3}})
    assert ok["success"] and ok["data"]["valid"], ok
    assert ok["data"]["normalized"]["num_frames"] == 9
    bad = wan_worker.call("inference.validate_request", {"method": "inference.text2video", "request": {"model_id": W21, "prompt": "x", "num_frames": 80}})
    assert bad["data"]["valid"] is False and bad["data"]["errors"][0]["path"] == "data.num_frames"


def test_save_path_never_overwrites(wan_worker, out_dir):
    req = {"model_id": W21, "prompt": "x", **SMALL, "steps": 1, "seed": 1, "output": {"save_path": "clips/one.mp4", "return_base64": False}}
    r = wan_worker.call("inference.text2video", req, timeout=120)
    assert r["success"], r
    assert Path(r["data"]["videos"][0]["path"]) == out_dir / "clips" / "one.mp4" and (out_dir / "clips" / "one.mp4").stat().st_size > 0
    again = wan_worker.call("inference.text2video", req)
    assert not again["success"] and again["error_code"] == "validation_error" and "already exists" in again["error"], again


def test_cancel_mid_video(wan_worker):
    long = {"model_id": W21, "prompt": "long", **SMALL, "steps": 150, "seed": 2}
    wan_worker.send({"type": "inference.text2video", "request_id": "v-long", "data": long})
    wan_worker.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "v-long", timeout=120)
    r = wan_worker.call("inference.cancel_session", {"session_id": "v-long"})
    assert r["success"] and r["data"]["action"] == "stopping", r
    step_at_cancel = r["data"]["step"]
    resp = wan_worker.response("v-long", timeout=60)
    assert resp["success"] is False and resp["error_code"] == "cancelled", resp
    status = wan_worker.call("inference.get_session_status", {"session_id": "v-long"})["data"]
    assert status["status"] == "cancelled" and status["progress"]["step"] <= step_at_cancel + 1
    # force cancel stops inside the step (pre-hooks on the blocks of both experts)
    wan_worker.send({"type": "inference.text2video", "request_id": "v-force", "data": {**long, "model_id": W22}})
    wan_worker.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "v-force", timeout=120)
    assert wan_worker.call("inference.cancel_session", {"session_id": "v-force", "force_cancel": True})["success"]
    assert wan_worker.response("v-force", timeout=60)["error_code"] == "cancelled"
    ok = wan_worker.call("inference.text2video", {"model_id": W21, "prompt": "x", **SMALL, "steps": 1}, timeout=120)
    assert ok["success"], ok


def test_example_fixture_pipes_through(models_dir, tmp_path):
    """examples/text2video.jsonl as the README pipes it: every request answered, none failing, mp4s back."""
    fixture = ROOT / "examples" / "text2video.jsonl"
    lines = fixture.read_text(encoding="utf-8").splitlines()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDWORKER_")}
    with open(fixture, "rb") as stdin:
        proc = subprocess.run(
            [sys.executable, "-m", "sdworker", "--models-dir", str(models_dir), "--output-dir", str(tmp_path / "o"), "--device", "cpu"],
            stdin=stdin, capture_output=True, timeout=300, env=env, cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    messages = [json.loads(line) for line in proc.stdout.splitlines()]
    responses = [m for m in messages if m.get("type") == "response"]
    assert len(responses) == len(lines) and all(m["success"] for m in responses), responses
    videos = [v for m in responses for v in (m.get("data") or {}).get("videos", [])]
    assert videos and all(v["format"] == "mp4" and base64.b64decode(v["base64"])[4:8] == b"ftyp" for v in videos)


def test_out_of_memory_retries_once_then_fails(spawn):
    """SDWORKER_FAULT_OOM_AT_STEP=1:3 injects three OOMs at step 1: a retry that fails too, then one that works."""
    w = spawn(env={"SDWORKER_FAULT_OOM_AT_STEP": "1:3"})
    req = {"model_id": W21, "prompt": "x", **SMALL, "steps": 2, "seed": 1}
    failed = w.call("inference.text2video", req, timeout=180)
    assert not failed["success"] and failed["error_code"] == "out_of_memory" and "low-memory mode" in failed["error"], failed
    ok = w.call("inference.text2video", req, timeout=180)
    assert ok["success"], ok
    assert any("retried once with attention_slicing" in x for x in ok["data"]["warnings"]), ok["data"]["warnings"]


def test_validate_and_benchmark_run_video_models(wan_worker):
    """model.validate_model's smoke step and model.benchmark_model run each Wan layout's own pipeline
    (image-to-video ones with a plain first frame, 5 frames)."""
    for model in (W21, I2V22, I2V21, TI2V):
        r = wan_worker.call("model.validate_model", {"model_id": model, "smoke": True}, timeout=180)
        assert r["success"] and r["data"]["valid"], (model, r)
        assert [c["name"] for c in r["data"]["checks"]][-1] == "smoke"
    b = wan_worker.call("model.benchmark_model", {"model_id": I2V22, "width": 64, "height": 64, "steps": 1, "repeats": 1}, timeout=180)
    assert b["success"] and b["data"]["steps_per_second"] > 0, b
