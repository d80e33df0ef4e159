"""HiDream-I1 (Full, Dev, Fast): the tiny models, the family's request mapping, detection, and parity with plain diffusers."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline, UniPCMultistepScheduler
from PIL import Image
from safetensors import safe_open

from conftest import decode_png as _decode, cpu_gens as _gens, load_pipes, family_worker, tiny_models_dir, assert_batch_noise_per_image
from sdworker.families import for_base_model
from sdworker.families.hidream import HiDreamFamily, output_size, scheduler_from, variant
from sdworker.managers import modes
from sdworker.managers.denoise import generators
from sdworker.managers.locator import ModelRef
from sdworker.models._hints import base_from_text
from sdworker.models.detect import detect, detect_file
from sdworker.schemas.generation import GenerationRequest
from sdworker.store.presets import detect_base_model
from sdworker.families.hidream.tiny import make_tiny_hidream

PROMPT = "a photo of a small red house by a lake"
FULL, DEV, FAST = "tiny-hidream-full", "tiny-hidream-dev", "tiny-hidream-fast"
HIDREAM = HiDreamFamily()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Overrides conftest's: this module's workers see the three tiny HiDream models only."""
    return tiny_models_dir(tmp_path_factory, "hidream", {FULL: "hidream", DEV: "hidream-dev", FAST: "hidream-fast"})


@pytest.fixture(scope="module")
def pipes(models_dir: Path) -> dict[str, HiDreamImagePipeline]:
    return load_pipes(models_dir, (FULL, DEV))


@pytest.fixture(scope="module")
def hidream_worker(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    w = family_worker(models_dir, tmp_path_factory, "hidream")
    yield w
    w.kill()


def _ref(models_dir: Path, name: str) -> ModelRef:
    return ModelRef(name, models_dir / name, "HiDreamImagePipeline", "hidream")


def _req(**data) -> GenerationRequest:
    return GenerationRequest.model_validate({"prompt": PROMPT, **data})


# ---- the tiny models -----------------------------------------------------------------------------


def test_tiny_hidream_models(pipes, models_dir):
    full, dev = pipes[FULL], pipes[DEV]
    assert type(full) is HiDreamImagePipeline and type(dev) is HiDreamImagePipeline
    assert type(full.scheduler) is UniPCMultistepScheduler and full.scheduler.config.use_flow_sigmas and full.scheduler.config.flow_shift == 3.0
    assert type(dev.scheduler) is FlowMatchEulerDiscreteScheduler and dev.scheduler.config.shift == 6.0
    fast = FlowMatchEulerDiscreteScheduler.from_pretrained(str(models_dir / FAST / "scheduler"))
    assert fast.config.shift == 3.0 and not fast.config.use_dynamic_shifting
    t = full.transformer.config
    assert len(t.llama_layers) == t.num_layers + t.num_single_layers
    assert t.caption_channels == [full.text_encoder_3.config.d_model, full.text_encoder_4.config.hidden_size]
    assert t.text_emb_dim == full.text_encoder.config.projection_dim + full.text_encoder_2.config.projection_dim
    assert full.vae.config.latent_channels == t.in_channels and full.vae_scale_factor == 1
    ids = full.tokenizer_4("a photo of a zebra").input_ids
    assert ids[0] == full.tokenizer_4.bos_token_id and full.tokenizer_4.unk_token_id in ids  # Llama 3's BOS; unknown word
    assert len(full.tokenizer_3("a photo").input_ids) == 3  # T5: known words one piece each, + </s>


def test_tiny_hidream_build_is_deterministic(models_dir, tmp_path):
    again = make_tiny_hidream("full", tmp_path / "again")
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(models_dir / FULL) for p in (models_dir / FULL).rglob("*") if p.is_file())
    for rel in files:
        assert (again / rel).read_bytes() == (models_dir / FULL / rel).read_bytes(), rel


# ---- detection ---------------------------------------------------------------------------------------


def test_detection_from_folders_and_single_files(models_dir):
    for name in (FULL, DEV, FAST):
        det = detect_file(models_dir / name)
        assert (det.kind, det.base_model) == ("checkpoint", "hidream"), det
        assert detect_base_model(_ref(models_dir, name)) == "hidream"
    assert detect_file(models_dir / FULL / "transformer").base_model == "hidream"
    with safe_open(str(models_dir / FULL / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for keys in (shapes, {f"model.diffusion_model.{k}": v for k, v in shapes.items()}):  # diffusers' and ComfyUI's layouts
        det = detect(keys, name="hidream_i1_dev.safetensors")
        assert (det.kind, det.base_model) == ("unet", "hidream"), det
        assert (det.details["double_blocks"], det.details["single_blocks"]) == (1, 1)
    assert [base_from_text(n) for n in ("HiDream-I1-Dev", "hi_dream_style_lora", "sushi_dreamshaper_8")] == ["hidream", "hidream", None]


def test_variants(models_dir, tmp_path):
    assert [variant(_ref(models_dir, n)) for n in (FULL, DEV, FAST)] == ["full", "dev", "fast"]
    # without a telling name, the scheduler says it: UniPC = Full, Euler shift 6 = Dev, shift 3 = Fast
    for name, expected in ((FULL, "full"), (DEV, "dev"), (FAST, "fast")):
        plain = tmp_path / f"model-{expected}"
        (plain / "scheduler").mkdir(parents=True)
        (plain / "scheduler" / "scheduler_config.json").write_bytes((models_dir / name / "scheduler" / "scheduler_config.json").read_bytes())
        assert variant(ModelRef("some-model", plain, "HiDreamImagePipeline", "hidream")) == expected


# ---- the family, in-process ------------------------------------------------------------------------


def test_registry_maps_hidream():
    assert for_base_model("hidream").name == "hidream"


def test_defaults_per_variant(models_dir):
    for name, steps, guidance in ((FULL, 50, 5.0), (DEV, 28, 0.0), (FAST, 16, 0.0)):
        c = HIDREAM.check(_req(width=128, height=128), "text2img", _ref(models_dir, name))
        assert not c.problems and not c.warnings, (name, c.problems, c.warnings)
        assert (c.req.steps, c.req.guidance_scale) == (steps, guidance), name
    own = HIDREAM.check(_req(steps=3, guidance_scale=2.0), "text2img", _ref(models_dir, FULL))
    assert (own.req.steps, own.req.guidance_scale) == (3, 2.0)


@pytest.mark.parametrize("size", [(1024, 1024), (1024, 768), (768, 1360), (512, 512), (2048, 1024), (1000, 600), (64, 2048)])
def test_output_size_matches_the_pipeline_rule(size):
    w, h = output_size(*size, 8)
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 1024 * 1024
    assert abs(w / h - size[0] / size[1]) < 0.1 * size[0] / size[1] + 0.05
    assert output_size(1024, 1024, 8) == (1024, 1024) and output_size(128, 128, 1) == (128, 128)


def test_rescaled_size_equals_what_diffusers_makes(pipes, models_dir):
    ref = _ref(models_dir, DEV)
    assert HIDREAM.native_size(ref) == 128
    pipe = pipes[DEV]
    for w, h in ((192, 96), (64, 128)):
        img = pipe(prompt="x", width=w, height=h, num_inference_steps=1, guidance_scale=0.0, generator=_gens(0), output_type="np").images[0]
        assert (img.shape[1], img.shape[0]) == output_size(w, h, 1)
    c = HIDREAM.check(_req(width=192, height=96), "text2img", ref)
    assert any("made as 180x90" in w for w in c.warnings), c.warnings
    params = HIDREAM.effective(c.req, SimpleNamespace(mode="text2img", width=192, height=96, ref=ref))
    assert (params["width"], params["height"], params["requested_width"], params["requested_height"]) == (180, 90, 192, 96)
    assert params["shift"] == 6.0 and params["max_sequence_length"] == 128 and params["hidream_variant"] == "dev"


def test_weighted_prompt_becomes_plain_text(models_dir):
    ref = _ref(models_dir, FULL)
    c = HIDREAM.check(_req(prompt="a (red:1.3) house BREAK [lake]"), "text2img", ref)
    assert not c.problems and "(" not in c.req.prompt and "red house" in c.req.prompt
    assert any("no A1111 weighting" in w for w in c.warnings)
    literal = HIDREAM.check(_req(prompt="a (red:1.3) house", prompt_syntax="none", width=128, height=128), "text2img", ref)
    assert literal.req.prompt == "a (red:1.3) house" and not literal.warnings


@pytest.mark.parametrize(
    "data, path",
    [
        ({"clip_skip": 2}, "data.clip_skip"),
        ({"sampler": "DPM++ 2M"}, "data.sampler"),
        ({"scheduler": "Euler a"}, "data.scheduler"),
        ({"sampler": "euler", "scheduler": "karras"}, "data.scheduler"),
        ({"refiner": "some-refiner"}, "data.refiner"),
        ({"hires": {"scale": 2}}, "data.hires"),
        ({"loras": [{"name": "x"}]}, "data.loras"),
        ({"prompt": "a cat <lora:x:0.5>"}, "data.prompt"),
        ({"controlnets": [{"model": "c", "image": "x"}]}, "data.controlnets"),
        ({"textual_inversions": ["emb"]}, "data.textual_inversions"),
        ({"vae": "some-vae"}, "data.vae"),
        ({"prompt_syntax": "compel"}, "data.prompt_syntax"),
    ],
)
def test_unsupported_options_are_refused(models_dir, data, path):
    c = HIDREAM.check(_req(**data), "text2img", _ref(models_dir, FULL))
    assert [p["path"] for p in c.problems] == [path], c.problems


def test_single_files_folders_without_llama_and_other_modes_are_refused(models_dir, tmp_path):
    one_file = ModelRef("hidream-i1", models_dir / "hidream-i1.safetensors", "HiDreamImagePipeline", "hidream", format="safetensors")
    assert [p["path"] for p in HIDREAM.check(_req(), "text2img", one_file).problems] == ["data.model_id"]
    no_llama = tmp_path / "hidream-i1-dev"  # as HiDream-ai publishes it: the Llama encoder comes from meta-llama
    shutil.copytree(models_dir / DEV, no_llama, ignore=shutil.ignore_patterns("*.safetensors"))
    index = json.loads((no_llama / "model_index.json").read_text())
    (no_llama / "model_index.json").write_text(json.dumps({**index, "text_encoder_4": [None, None], "tokenizer_4": [None, None]}))
    c = HIDREAM.check(_req(), "text2img", ModelRef("hidream-i1-dev", no_llama, "HiDreamImagePipeline", "hidream"))
    assert [p["path"] for p in c.problems] == ["data.model_id"] and "text_encoder_4" in c.problems[0]["message"]
    for mode in ("img2img", "inpainting"):
        c = HIDREAM.check(_req(), mode, _ref(models_dir, FULL))
        assert c.problems and "no HiDream img2img or inpainting" in c.problems[0]["message"]


def test_sampler_names(models_dir):
    full, dev = _ref(models_dir, FULL), _ref(models_dir, DEV)
    for data in ({"sampler": "uni_pc", "scheduler": "simple"}, {"scheduler": "UniPC"}, {"sampler": "UniPCMultistepScheduler"}, {"scheduler": "normal"}):
        c = HIDREAM.check(_req(width=128, height=128, **data), "text2img", full)
        assert not c.problems and not c.warnings, (data, c.problems, c.warnings)
    for data in ({"sampler": "euler", "scheduler": "normal"}, {"scheduler": "Euler"}, {"sampler": "FlowMatchEulerDiscreteScheduler"}, {"sampler": "euler_simple"}):
        c = HIDREAM.check(_req(width=128, height=128, **data), "text2img", dev)
        assert not c.problems and not c.warnings, (data, c.problems, c.warnings)
    other = HIDREAM.check(_req(width=128, height=128, sampler="uni_pc"), "text2img", dev)
    assert not other.problems and not other.warnings  # the run builds UniPC from the Dev checkpoint's config
    bad = HIDREAM.scheduler_problems(_req(sampler="dpmpp_2m"))
    assert bad[0]["path"] == "data.sampler" and "uni_pc" in bad[0]["message"] and "euler" in bad[0]["message"]


def test_scheduler_for_maps_names_to_flow_schedulers(pipes):
    full_cfg, dev_cfg = dict(pipes[FULL].scheduler.config), dict(pipes[DEV].scheduler.config)
    own = scheduler_from(full_cfg, "")
    assert type(own) is UniPCMultistepScheduler and own.config.flow_shift == 3.0 and own is not pipes[FULL].scheduler
    euler = HIDREAM.scheduler_for(_req(sampler="euler", scheduler="simple"), full_cfg)
    assert type(euler) is FlowMatchEulerDiscreteScheduler and euler.config.shift == 3.0 and not euler.config.use_dynamic_shifting
    unipc = HIDREAM.scheduler_for(_req(sampler="uni_pc"), dev_cfg)
    assert type(unipc) is UniPCMultistepScheduler and unipc.config.use_flow_sigmas and unipc.config.flow_shift == 6.0
    assert unipc.config.prediction_type == "flow_prediction"
    assert type(HIDREAM.scheduler_for(_req(scheduler="Euler"), dev_cfg)) is FlowMatchEulerDiscreteScheduler
    pipe = pipes[DEV]
    own, pipe.scheduler = pipe.scheduler, unipc
    try:  # the pipeline takes UniPC on a Dev checkpoint (its UniPC branch)
        img = pipe(prompt="x", width=128, height=128, num_inference_steps=2, guidance_scale=0.0, generator=_gens(1), output_type="np").images
    finally:
        pipe.scheduler = own
    assert img.shape == (1, 128, 128, 3) and np.isfinite(img).all()


def test_guidance_and_negative_prompt(models_dir):
    full, dev = _ref(models_dir, FULL), _ref(models_dir, DEV)
    plan = SimpleNamespace(mode="text2img", width=128, height=128, ref=full)
    cfg = HIDREAM.check(_req(negative_prompt="blurry", width=128, height=128), "text2img", full)
    assert not cfg.warnings and HIDREAM.prompt_kwargs(None, cfg.req)["negative_prompt"] == "blurry"
    assert HIDREAM.call_kwargs(cfg.req, plan) == {"guidance_scale": 5.0, "max_sequence_length": 128}
    unused = HIDREAM.check(_req(negative_prompt="blurry", width=128, height=128), "text2img", dev)
    assert any("negative_prompt not used" in w for w in unused.warnings)
    assert "negative_prompt" not in HIDREAM.prompt_kwargs(None, unused.req)
    loud = HIDREAM.check(_req(guidance_scale=4.0, width=128, height=128), "text2img", dev)
    assert loud.req.guidance_scale == 4.0 and any("guidance-distilled" in w for w in loud.warnings)
    flux_only = HIDREAM.check(_req(true_cfg_scale=3.0, width=128, height=128), "text2img", full)
    assert any("true_cfg_scale ignored" in w for w in flux_only.warnings)


def test_family_kwargs_equal_plain_diffusers(pipes, models_dir):
    """Our kwargs on the same pipeline and generators give plain diffusers' pixels (Full: real CFG)."""
    pipe = pipes[FULL]
    ref = _ref(models_dir, FULL)
    checked = HIDREAM.check(_req(steps=2, negative_prompt="blurry", width=128, height=128, seed=9), "text2img", ref)
    plan = SimpleNamespace(mode="text2img", width=128, height=128, ref=ref)
    kwargs = {
        **HIDREAM.prompt_kwargs(pipe, checked.req),
        **modes.call_kwargs("text2img", modes.ModeInputs(), 128, 128, checked.req.strength),
        **HIDREAM.call_kwargs(checked.req, plan),
    }
    ours = pipe(**kwargs, num_inference_steps=2, num_images_per_prompt=2, generator=generators(torch, 9, 2), output_type="np").images
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)  # the worker's fresh scheduler per run
    plain = pipe(
        prompt=PROMPT, negative_prompt="blurry", width=128, height=128, num_inference_steps=2, guidance_scale=5.0,
        num_images_per_prompt=2, generator=_gens(9, 2), output_type="np",
    ).images
    assert np.array_equal(ours, plain)


# ---- through the worker ------------------------------------------------------------------------------


def test_list_models_shows_hidream(hidream_worker):
    r = hidream_worker.call("model.list_models", {"refresh": True})
    assert r["success"], r
    bases = {i["model_id"]: i["base_model"] for i in r["data"]["items"]}
    assert bases == {FULL: "hidream", DEV: "hidream", FAST: "hidream"}


def test_text2img_full_with_cfg_equals_diffusers(hidream_worker, pipes):
    req = {"model_id": FULL, "prompt": PROMPT, "negative_prompt": "blurry, dark", "width": 128, "height": 128, "steps": 2,
           "guidance_scale": 4.0, "seed": 1234, "num_images": 2}
    r = hidream_worker.call("inference.text2img", req, timeout=180)
    assert r["success"], r
    data = r["data"]
    assert data["warnings"] == []
    params = data["parameters"]
    assert (params["base_model"], params["scheduler"], params["guidance_scale"], params["shift"]) == ("hidream", "UniPCMultistepScheduler", 4.0, 3.0)
    expected = pipes[FULL](
        prompt=PROMPT, negative_prompt="blurry, dark", width=128, height=128, num_inference_steps=2, guidance_scale=4.0,
        num_images_per_prompt=2, generator=_gens(1234, 2),
    ).images
    for im, exp in zip(data["images"], expected):
        assert (im["width"], im["height"]) == (128, 128)
        assert np.array_equal(_decode(im["base64"]), np.asarray(exp.convert("RGB")))


def test_text2img_dev_rescales_and_equals_diffusers(hidream_worker, pipes):
    req = {"model_id": DEV, "prompt": PROMPT, "width": 192, "height": 96, "steps": 2, "seed": 77, "max_sequence_length": 64}
    r = hidream_worker.call("inference.text2img", req, timeout=180)
    assert r["success"], r
    data = r["data"]
    params = data["parameters"]
    assert (params["width"], params["height"], params["requested_width"], params["requested_height"]) == (180, 90, 192, 96)
    assert (params["guidance_scale"], params["steps"], params["max_sequence_length"], params["hidream_variant"]) == (0.0, 2, 64, "dev")
    assert any("made as 180x90" in w for w in data["warnings"]), data["warnings"]
    image = data["images"][0]
    assert (image["width"], image["height"]) == (180, 90) and "Size: 180x90" in image["infotext"]
    exp = pipes[DEV](
        prompt=PROMPT, width=192, height=96, num_inference_steps=2, guidance_scale=0.0, max_sequence_length=64, generator=_gens(77),
    ).images[0]
    assert np.array_equal(_decode(image["base64"]), np.asarray(exp.convert("RGB")))


@pytest.mark.parametrize("preset, model, guidance, scheduler", [("quality", FULL, 5.0, "UniPCMultistepScheduler"), ("speed", DEV, 1.0, "FlowMatchEulerDiscreteScheduler")])
def test_builtin_presets_apply_to_hidream(hidream_worker, preset, model, guidance, scheduler):
    resolved = hidream_worker.call("config.resolve", {"model_id": model, "configuration_type": preset})
    assert resolved["success"], resolved
    assert resolved["data"]["base_model"] == "hidream" and resolved["data"]["origin"] == "builtin"
    req = {"model_id": model, "prompt": PROMPT, "preset": preset, "width": 128, "height": 128, "steps": 2, "seed": 3}
    r = hidream_worker.call("inference.text2img", req, timeout=180)
    assert r["success"], r
    params = r["data"]["parameters"]
    assert params["preset_origin"] == "builtin" and params["preset_base_model"] == "hidream"
    assert (params["guidance_scale"], params["scheduler"], params["steps"]) == (guidance, scheduler, 2)
    assert r["data"]["warnings"] == []


@pytest.mark.parametrize(
    "extra, path",
    [({"clip_skip": 2}, "data.clip_skip"), ({"sampler": "DPM++ 2M"}, "data.sampler"), ({"loras": [{"name": "x"}]}, "data.loras"),
     ({"refiner": {"model": DEV}}, "data.refiner")],
)
def test_worker_refuses_unsupported_options(hidream_worker, extra, path):
    r = hidream_worker.call("inference.text2img", {"model_id": FULL, "prompt": "x", "steps": 2, "width": 128, "height": 128, **extra})
    assert not r["success"] and r["error_code"] == "validation_error", r
    assert path in [d["path"] for d in r["error_details"]], r


def test_worker_refuses_img2img(hidream_worker):
    png = io.BytesIO()
    Image.new("RGB", (128, 128), (120, 30, 30)).save(png, format="PNG")
    req = {"model_id": DEV, "prompt": "x", "steps": 2, "init_image": base64.b64encode(png.getvalue()).decode()}
    r = hidream_worker.call("inference.img2img", req)
    assert not r["success"] and r["error_code"] == "validation_error", r
    assert r["error_details"][0]["path"] == "data.model_id", r


def test_batch_process_runs_hidream_items_in_one_call(hidream_worker, pipes):
    """HiDream text2img items with equal settings share one call (prompt list, one generator per image);
    another sampler is another call."""
    prompts, seeds = ["a red house", "a blue boat on a lake"], [7, 8]
    base = {"model_id": DEV, "width": 128, "height": 128, "steps": 2, "max_sequence_length": 64}
    reqs = [{**base, "prompt": p, "seed": s} for p, s in zip(prompts, seeds)] + [{**base, "prompt": "x", "seed": 9, "sampler": "uni_pc"}]
    r = hidream_worker.call("inference.batch_process", {"requests": reqs, "batch_config": {"enable_dynamic_sizing": False}}, timeout=180)
    assert r["success"], r
    items, perf = r["data"]["items"], r["data"]["performance"]
    assert all(it["success"] for it in items), items
    assert (perf["groups"], perf["pipeline_calls"], perf["batch_sizes"]) == (2, 2, [2, 1])
    assert [it["parameters"]["scheduler"] for it in items] == ["FlowMatchEulerDiscreteScheduler"] * 2 + ["UniPCMultistepScheduler"]
    expected = pipes[DEV](
        prompt=prompts, width=128, height=128, num_inference_steps=2, guidance_scale=0.0, max_sequence_length=64, generator=[_gens(s)[0] for s in seeds],
    ).images
    for it, exp in zip(items, expected):
        assert np.array_equal(_decode(it["images"][0]["base64"]), np.asarray(exp.convert("RGB")))


def test_batched_hidream_image_starts_from_its_one_image_noise(pipes):
    """Image i of a batched HiDream call with seed s starts from the noise of a one-image call with seed s + i."""
    assert_batch_noise_per_image(pipes[DEV], pipes[DEV].transformer.config.in_channels, 128, 3)


def test_text2img_dev_with_unipc_runs_unipc_and_equals_diffusers(hidream_worker, pipes):
    """Naming the other sampler switches the run's scheduler (built from the checkpoint's config, shift kept)."""
    req = {"model_id": DEV, "prompt": PROMPT, "width": 128, "height": 128, "steps": 2, "seed": 5, "sampler": "uni_pc"}
    r = hidream_worker.call("inference.text2img", req, timeout=180)
    assert r["success"], r
    assert r["data"]["parameters"]["scheduler"] == "UniPCMultistepScheduler" and r["data"]["warnings"] == []
    pipe = pipes[DEV]
    own, pipe.scheduler = pipe.scheduler, scheduler_from(dict(pipe.scheduler.config), "UniPCMultistepScheduler")
    try:
        exp = pipe(prompt=PROMPT, width=128, height=128, num_inference_steps=2, guidance_scale=0.0, generator=_gens(5)).images[0]
    finally:
        pipe.scheduler = own
    assert np.array_equal(_decode(r["data"]["images"][0]["base64"]), np.asarray(exp.convert("RGB")))
