"""Flux (dev, schnell): the tiny models, the Flux family's request mapping, and parity with plain diffusers."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForImage2Image, FluxImg2ImgPipeline, FluxPipeline
from PIL import Image

from conftest import Worker, decode_png as _decode, png_b64 as _png_b64, load_pipes, family_worker, tiny_models_dir, assert_batch_noise_per_image
from sdworker.families import for_base_model
from sdworker.families.flux import FluxFamily, size_multiple, transformer_variant
from sdworker.managers import modes
from sdworker.managers.denoise import generators
from sdworker.managers.locator import ModelRef
from sdworker.schemas.generation import GenerationRequest
from sdworker.families.flux.tiny import make_tiny_flux

PROMPT = "a photo of a small red house by a lake"
DEV, SCHNELL = "tiny-flux-dev", "tiny-flux-schnell"
FLUX = FluxFamily()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Overrides conftest's: this module's workers see the two tiny Flux models only."""
    return tiny_models_dir(tmp_path_factory, "flux", {DEV: "flux-dev", SCHNELL: "flux-schnell"})


@pytest.fixture(scope="module")
def pipes(models_dir: Path) -> dict[str, FluxPipeline]:
    return load_pipes(models_dir, (DEV, SCHNELL))


@pytest.fixture(scope="module")
def flux_worker(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    w = family_worker(models_dir, tmp_path_factory, "flux")
    yield w
    w.kill()


@pytest.fixture(scope="module")
def init_image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def _ref(models_dir: Path, name: str, base: str) -> ModelRef:
    return ModelRef(name, models_dir / name, "FluxPipeline", base)


def _req(**data) -> GenerationRequest:
    return GenerationRequest.model_validate({"prompt": PROMPT, **data})


# ---- the tiny models -----------------------------------------------------------------------------


def test_tiny_flux_models(pipes):
    dev, schnell = pipes[DEV], pipes[SCHNELL]
    assert type(dev) is FluxPipeline and type(schnell) is FluxPipeline
    assert dev.transformer.config.guidance_embeds is True and schnell.transformer.config.guidance_embeds is False
    assert dev.scheduler.config.use_dynamic_shifting is True and dev.scheduler.config.shift == 3.0
    assert schnell.scheduler.config.use_dynamic_shifting is False
    assert dev.vae.config.latent_channels * 4 == dev.transformer.config.in_channels == 64
    assert type(dev.tokenizer_2).__name__ in ("T5TokenizerFast", "T5Tokenizer")
    ids = dev.tokenizer_2("a photo of a zebra").input_ids
    assert ids[-1] == dev.tokenizer_2.eos_token_id and dev.tokenizer_2.unk_token_id not in ids  # unknown words spell out
    assert len(dev.tokenizer_2("a photo").input_ids) == 3  # known words are one piece each, + </s>


def test_tiny_flux_build_is_deterministic(models_dir, tmp_path):
    again = make_tiny_flux("flux-dev", tmp_path / "again")
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(models_dir / DEV) for p in (models_dir / DEV).rglob("*") if p.is_file())
    for rel in files:
        assert (again / rel).read_bytes() == (models_dir / DEV / rel).read_bytes(), rel


# ---- the family, in-process ------------------------------------------------------------------------


def test_registry_maps_flux_bases():
    for base in ("flux_dev", "flux_schnell", "flux_krea", "flux"):
        assert for_base_model(base).name == "flux"
    assert for_base_model("sdxl").name == "sd" and for_base_model("sd3").name == "sd3" and for_base_model("unknown") is None


def test_defaults_and_schnell_guidance(models_dir):
    dev = FLUX.check(_req(), "text2img", _ref(models_dir, DEV, "flux_dev"))
    assert not dev.problems and not dev.warnings
    assert (dev.req.steps, dev.req.guidance_scale) == (28, 3.5)
    quiet = FLUX.check(_req(), "text2img", _ref(models_dir, SCHNELL, "flux_schnell"))
    assert (quiet.req.steps, quiet.req.guidance_scale, quiet.warnings) == (4, 0.0, [])
    loud = FLUX.check(_req(guidance_scale=5, steps=2), "text2img", _ref(models_dir, SCHNELL, "flux_schnell"))
    assert loud.req.guidance_scale == 0.0 and loud.req.steps == 2
    assert any("schnell has no guidance" in w for w in loud.warnings)


def test_weighted_prompt_becomes_plain_text(models_dir):
    ref = _ref(models_dir, DEV, "flux_dev")
    c = FLUX.check(_req(prompt="a (red:1.3) house BREAK [lake]"), "text2img", ref)
    assert not c.problems and "(" not in c.req.prompt and "red house" in c.req.prompt
    assert any("no A1111 weighting" in w for w in c.warnings)
    literal = FLUX.check(_req(prompt="a (red:1.3) house", prompt_syntax="none"), "text2img", ref)
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
        ({"textual_inversions": ["x"]}, "data.textual_inversions"),
        ({"vae": "some-vae"}, "data.vae"),
        ({"prompt_syntax": "compel"}, "data.prompt_syntax"),
    ],
)
def test_sd_only_options_are_refused(models_dir, data, path):
    c = FLUX.check(_req(**data), "text2img", _ref(models_dir, DEV, "flux_dev"))
    assert [p["path"] for p in c.problems] == [path], c.problems


def test_size_must_fit_the_latent_packing(tmp_path):
    real = ModelRef("flux1-dev", tmp_path / "no-such-model", "FluxPipeline", "flux_dev")  # no VAE config: FLUX.1's factor 8
    assert size_multiple(real) == 16
    c = FLUX.check(_req(width=1016, height=1024), "text2img", real)
    assert [p["path"] for p in c.problems] == ["data.width"]
    assert FLUX.fit_size(real, 1000, 744) == (992, 736)  # an init image's 8-multiple sides, fitted to the packing


def test_flow_match_sampler_names_are_accepted(models_dir):
    ref = _ref(models_dir, DEV, "flux_dev")
    for data in ({"sampler": "euler", "scheduler": "simple"}, {"scheduler": "Euler"}, {"sampler": "FlowMatchEulerDiscreteScheduler"},
                 {"scheduler": "normal"}, {"sampler": "flow_match_euler"}):
        assert not FLUX.check(_req(**data), "text2img", ref).problems, data
    assert size_multiple(ref) == 4  # tiny VAE: factor 2, times the 2x2 packing


def test_loras_and_controlnets_are_taken(models_dir):
    """No longer refused by the family: the generation interface plans them (tests/test_flux_adapters.py)."""
    ref = _ref(models_dir, DEV, "flux_dev")
    for data in ({"loras": [{"name": "x"}]}, {"prompt": "a cat <lora:x:0.5>"}, {"controlnets": [{"model": "x", "image": "y"}]}):
        assert not FLUX.check(_req(**data), "text2img", ref).problems, data


def test_inpainting_and_fill_models(models_dir, tmp_path):
    dev = _ref(models_dir, DEV, "flux_dev")
    assert transformer_variant(dev) == "base"
    c = FLUX.check(_req(), "inpainting", dev)
    assert not c.problems and (c.req.steps, c.req.guidance_scale, c.req.strength) == (28, 3.5, 0.75)
    make_tiny_flux("flux-fill", tmp_path / "fill")
    fill = ModelRef("fill", tmp_path / "fill", "FluxFillPipeline", "flux_dev")
    assert transformer_variant(fill) == "fill"
    assert transformer_variant(ModelRef("fill", tmp_path / "fill", "FluxPipeline", "flux_dev")) == "fill"  # by in_channels
    assert FLUX.preset_keeps(fill) == ("steps", "guidance_scale") and FLUX.preset_keeps(_ref(models_dir, DEV, "flux_dev")) == ()
    c = FLUX.check(_req(), "inpainting", fill)
    assert not c.problems and (c.req.steps, c.req.guidance_scale, c.req.strength) == (50, 30.0, 1.0)
    assert FLUX.check(_req(strength=0.5, steps=3), "inpainting", fill).req.strength == 0.5
    for mode in ("text2img", "img2img"):
        problems = FLUX.check(_req(), mode, fill).problems
        assert [p["path"] for p in problems] == ["data.model_id"] and "inpainting only" in problems[0]["message"]
    cfg = FLUX.check(_req(negative_prompt="blurry", true_cfg_scale=2.0), "inpainting", fill)
    assert cfg.req.true_cfg_scale is None and any("no true CFG" in w for w in cfg.warnings)
    assert "negative_prompt" not in FLUX.prompt_kwargs(None, cfg.req)
    cn = FLUX.check(_req(controlnets=[{"model": "x", "image": "y"}]), "inpainting", fill)
    assert [p["path"] for p in cn.problems] == ["data.controlnets"]


def test_negative_prompt_without_true_cfg_is_not_used(models_dir):
    ref = _ref(models_dir, DEV, "flux_dev")
    c = FLUX.check(_req(negative_prompt="blurry"), "text2img", ref)
    assert any("true_cfg_scale" in w for w in c.warnings)
    assert "negative_prompt" not in FLUX.prompt_kwargs(None, c.req)
    alone = FLUX.check(_req(true_cfg_scale=3.0), "text2img", ref)
    assert any("needs a negative_prompt" in w for w in alone.warnings)
    plan = SimpleNamespace(mode="text2img", width=64, height=64, ref=ref)
    assert "true_cfg_scale" not in FLUX.call_kwargs(alone.req, plan)
    both = FLUX.check(_req(negative_prompt="blurry", true_cfg_scale=3.0, max_sequence_length=77), "text2img", ref)
    assert not both.warnings
    assert FLUX.prompt_kwargs(None, both.req)["negative_prompt"] == "blurry"
    assert FLUX.call_kwargs(both.req, plan) == {"guidance_scale": 3.5, "max_sequence_length": 77, "true_cfg_scale": 3.0}


def test_sd_family_ignores_flux_options(models_dir):
    sd = for_base_model("sdxl")
    c = sd.check(_req(true_cfg_scale=2.0, steps=3), "text2img", ModelRef("x", models_dir / "x", "StableDiffusionXLPipeline", "sdxl"))
    assert not c.problems and c.req.steps == 3 and c.req.guidance_scale == 7.0
    assert any("true_cfg_scale ignored" in w for w in c.warnings)
    assert sd.call_kwargs(c.req, SimpleNamespace(mode="text2img", width=64, height=64, ref=None)) == {"guidance_scale": 7.0}


def test_family_kwargs_equal_plain_diffusers(pipes, models_dir):
    """Our kwargs on the same pipeline and generators give plain diffusers' pixels."""
    pipe = pipes[DEV]
    ref = _ref(models_dir, DEV, "flux_dev")
    checked = FLUX.check(_req(steps=2, guidance_scale=4.0, width=64, height=64, seed=9), "text2img", ref)
    plan = SimpleNamespace(mode="text2img", width=64, height=64, ref=ref)
    kwargs = {
        **FLUX.prompt_kwargs(pipe, checked.req),
        **modes.call_kwargs("text2img", modes.ModeInputs(), 64, 64, checked.req.strength),
        **FLUX.call_kwargs(checked.req, plan),
    }
    assert kwargs["max_sequence_length"] == 512 and kwargs["guidance_scale"] == 4.0
    ours = pipe(**kwargs, num_inference_steps=2, num_images_per_prompt=2, generator=generators(torch, 9, 2), output_type="np").images
    plain = pipe(
        prompt=PROMPT, width=64, height=64, num_inference_steps=2, guidance_scale=4.0, num_images_per_prompt=2,
        generator=[torch.Generator("cpu").manual_seed(9 + i) for i in range(2)], output_type="np",
    ).images
    assert np.array_equal(ours, plain)


# ---- through the worker ------------------------------------------------------------------------------


def test_list_models_shows_flux_bases(flux_worker):
    r = flux_worker.call("model.list_models", {"refresh": True})
    assert r["success"], r
    bases = {i["model_id"]: i["base_model"] for i in r["data"]["items"]}
    assert bases == {DEV: "flux_dev", SCHNELL: "flux_schnell"}


def test_text2img_dev_equals_diffusers(flux_worker, pipes):
    req = {"model_id": DEV, "prompt": PROMPT, "width": 64, "height": 64, "steps": 2, "guidance_scale": 4.0, "seed": 1234, "num_images": 2}
    r = flux_worker.call("inference.text2img", req, timeout=120)
    assert r["success"], r
    data = r["data"]
    assert data["parameters"]["base_model"] == "flux_dev" and data["parameters"]["max_sequence_length"] == 512
    expected = pipes[DEV](
        prompt=PROMPT, width=64, height=64, num_inference_steps=2, guidance_scale=4.0, num_images_per_prompt=2,
        generator=[torch.Generator("cpu").manual_seed(1234 + i) for i in range(2)],
    ).images
    for im, exp in zip(data["images"], expected):
        assert (im["width"], im["height"]) == (64, 64)
        assert np.array_equal(_decode(im["base64"]), np.asarray(exp.convert("RGB")))


def test_img2img_dev_equals_diffusers(flux_worker, pipes, init_image):
    req = {"model_id": DEV, "prompt": PROMPT, "init_image": _png_b64(init_image), "strength": 0.6, "steps": 4, "guidance_scale": 3.0, "seed": 21}
    r = flux_worker.call("inference.img2img", req, timeout=120)
    assert r["success"], r
    i2i = AutoPipelineForImage2Image.from_pipe(pipes[DEV])
    assert type(i2i) is FluxImg2ImgPipeline
    i2i.set_progress_bar_config(disable=True)
    exp = i2i(
        prompt=PROMPT, image=init_image, strength=0.6, num_inference_steps=4, guidance_scale=3.0, width=64, height=64,
        generator=[torch.Generator("cpu").manual_seed(21)],
    ).images[0]
    got = _decode(r["data"]["images"][0]["base64"])
    assert got.shape == (64, 64, 3)
    assert np.array_equal(got, np.asarray(exp.convert("RGB")))


def test_schnell_ignores_guidance_with_a_warning(flux_worker, pipes):
    req = {"model_id": SCHNELL, "prompt": PROMPT, "width": 64, "height": 64, "steps": 2, "guidance_scale": 6.0, "seed": 5}
    r = flux_worker.call("inference.text2img", req, timeout=120)
    assert r["success"], r
    assert any("schnell has no guidance" in w for w in r["data"]["warnings"]), r["data"]["warnings"]
    assert r["data"]["parameters"]["guidance_scale"] == 0.0 and r["data"]["parameters"]["max_sequence_length"] == 256
    exp = pipes[SCHNELL](
        prompt=PROMPT, width=64, height=64, num_inference_steps=2, guidance_scale=0.0, max_sequence_length=256,
        generator=[torch.Generator("cpu").manual_seed(5)],
    ).images[0]
    assert np.array_equal(_decode(r["data"]["images"][0]["base64"]), np.asarray(exp.convert("RGB")))


def test_true_cfg_equals_diffusers(flux_worker, pipes):
    req = {"model_id": DEV, "prompt": PROMPT, "negative_prompt": "blurry, dark", "true_cfg_scale": 2.5,
           "width": 64, "height": 64, "steps": 2, "guidance_scale": 3.5, "seed": 8, "max_sequence_length": 64}
    r = flux_worker.call("inference.text2img", req, timeout=120)
    assert r["success"], r
    assert r["data"]["warnings"] == [] and r["data"]["parameters"]["true_cfg_scale"] == 2.5
    exp = pipes[DEV](
        prompt=PROMPT, negative_prompt="blurry, dark", true_cfg_scale=2.5, width=64, height=64, num_inference_steps=2,
        guidance_scale=3.5, max_sequence_length=64, generator=[torch.Generator("cpu").manual_seed(8)],
    ).images[0]
    assert np.array_equal(_decode(r["data"]["images"][0]["base64"]), np.asarray(exp.convert("RGB")))


def test_builtin_preset_applies_to_flux(flux_worker):
    resolved = flux_worker.call("config.resolve", {"model_id": SCHNELL, "configuration_type": "quality"})
    assert resolved["success"], resolved
    assert resolved["data"]["base_model"] == "flux_schnell" and resolved["data"]["origin"] == "builtin"
    req = {"model_id": DEV, "prompt": PROMPT, "preset": "speed", "width": 64, "height": 64, "steps": 2, "seed": 3}
    r = flux_worker.call("inference.text2img", req, timeout=120)
    assert r["success"], r
    params = r["data"]["parameters"]
    assert params["preset_origin"] == "builtin" and params["preset_base_model"] == "flux_dev"
    assert (params["guidance_scale"], params["max_sequence_length"], params["true_cfg_scale"]) == (3.5, 512, 1.0)
    assert params["scheduler"] == "FlowMatchEulerDiscreteScheduler"


def test_batch_process_runs_flux_text2img_items_in_one_call(flux_worker, pipes):
    """Flux text2img items with equal settings share one FluxPipeline call (prompt list, one generator per
    image); another max_sequence_length is another call."""
    prompts, seeds = ["a red house", "a blue boat on a lake", "a green tree in a field"], [11, 22, 33]
    base = {"model_id": DEV, "width": 64, "height": 64, "steps": 2, "guidance_scale": 4.0, "max_sequence_length": 64}
    reqs = [{**base, "prompt": p, "seed": s} for p, s in zip(prompts, seeds)]
    reqs.insert(1, {**base, "prompt": "longer tokens", "seed": 5, "max_sequence_length": 128})
    r = flux_worker.call("inference.batch_process", {"requests": reqs, "batch_config": {"batch_size": 4, "enable_dynamic_sizing": False}}, timeout=180)
    assert r["success"], r
    items, perf = r["data"]["items"], r["data"]["performance"]
    assert all(it["success"] for it in items), items
    assert (perf["groups"], perf["pipeline_calls"], perf["batch_sizes"]) == (2, 2, [3, 1])
    batched = [items[0], items[2], items[3]]
    assert [it["parameters"]["batch_group"] for it in batched] == [0, 0, 0] and items[1]["parameters"]["batch_group"] == 1
    params = batched[0]["parameters"]
    assert (params["guidance_scale"], params["max_sequence_length"], params["scheduler"]) == (4.0, 64, "FlowMatchEulerDiscreteScheduler")
    assert [it["images"][0]["seed"] for it in batched] == seeds
    expected = pipes[DEV](
        prompt=prompts, width=64, height=64, num_inference_steps=2, guidance_scale=4.0, max_sequence_length=64,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
    ).images
    for it, exp in zip(batched, expected):
        assert np.array_equal(_decode(it["images"][0]["base64"]), np.asarray(exp.convert("RGB")))


def test_batched_flux_image_starts_from_its_one_image_noise(pipes):
    """Image i of a batched Flux call with seed s starts from the noise of a one-image call with seed s + i."""
    assert_batch_noise_per_image(pipes[DEV], pipes[DEV].transformer.config.in_channels // 4, 64, 3)


def _i2i(pipes) -> FluxImg2ImgPipeline:
    pipe = AutoPipelineForImage2Image.from_pipe(pipes[DEV])
    assert type(pipe) is FluxImg2ImgPipeline
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_batch_process_runs_flux_img2img_items_in_one_call(flux_worker, pipes, init_image):
    """Flux img2img items with equal settings share one FluxImg2ImgPipeline call (prompt, init image and
    generator lists), equal to plain diffusers' call with the same lists; another strength is another call."""
    inits = [init_image, init_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    prompts, seeds = ["a red house", "a blue boat on a lake"], [41, 42]
    base = {"model_id": DEV, "type": "img2img", "width": 64, "height": 64, "steps": 2, "guidance_scale": 3.0, "strength": 0.6, "max_sequence_length": 64}
    reqs = [{**base, "prompt": p, "seed": s, "init_image": _png_b64(im)} for p, s, im in zip(prompts, seeds, inits)]
    reqs.append({**reqs[0], "strength": 0.9})
    r = flux_worker.call("inference.batch_process", {"requests": reqs, "batch_config": {"batch_size": 4, "enable_dynamic_sizing": False}}, timeout=180)
    assert r["success"], r
    items, perf = r["data"]["items"], r["data"]["performance"]
    assert all(it["success"] for it in items), items
    assert (perf["groups"], perf["pipeline_calls"], perf["batch_sizes"]) == (2, 2, [2, 1])
    assert [it["parameters"]["batch_group"] for it in items] == [0, 0, 1]
    assert not any(it["parameters"]["batch_alone"] for it in items) and r["data"]["warnings"] == []
    assert [(it["parameters"]["mode"], it["parameters"]["strength"]) for it in items] == [("img2img", 0.6), ("img2img", 0.6), ("img2img", 0.9)]
    expected = _i2i(pipes)(
        prompt=prompts, image=inits, strength=0.6, width=64, height=64, num_inference_steps=2, guidance_scale=3.0, max_sequence_length=64,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
    ).images
    for it, exp in zip(items, expected):
        assert np.array_equal(_decode(it["images"][0]["base64"]), np.asarray(exp.convert("RGB")))


def test_batched_flux_img2img_image_starts_from_its_one_image_latents(pipes, init_image):
    """Row i of a batched FluxImg2ImgPipeline call (image list, generator list) starts where a one-image call
    with image i and seed s + i does: diffusers encodes image i and draws its noise with generator i."""
    pipe = _i2i(pipes)
    inits = [init_image, init_image.transpose(Image.Transpose.FLIP_TOP_BOTTOM), init_image.rotate(90)]
    ch = pipe.transformer.config.in_channels // 4
    pipe.scheduler = copy.deepcopy(pipe.scheduler)  # pipes[DEV]'s own stays as it was
    pipe.scheduler.set_timesteps(2, mu=1.0)
    t = pipe.scheduler.timesteps[:1]

    def latents(images: list, first: int):
        img = pipe.image_processor.preprocess(images, height=64, width=64).to(torch.float32)
        out, _ = pipe.prepare_latents(img, t.repeat(len(images)), len(images), ch, 64, 64, torch.float32, torch.device("cpu"), generators(torch, first, len(images)))
        return out

    batch = latents(inits, 500)
    for i, im in enumerate(inits):
        assert torch.equal(batch[i], latents([im], 500 + i)[0])


_TEXT2IMG_ONLY = "from sdworker.families.flux import FluxFamily; FluxFamily.batch_modes = ('text2img',); from sdworker.__main__ import main; import sys; main(sys.argv[1:])"


def test_batch_process_runs_an_item_of_an_unbatched_mode_alone(models_dir, tmp_path, init_image):
    """A family that batches text2img only (Flux before its image modes batched): an img2img item still
    runs, alone, in one call made as its own inference.img2img request's, and gives that request's images;
    the text2img items around it still share a call."""
    (tmp_path / "out").mkdir()
    (tmp_path / "data").mkdir()
    w = Worker(["--models-dir", str(models_dir), "--output-dir", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data")], cmd=[sys.executable, "-c", _TEXT2IMG_ONLY])
    try:
        base = {"model_id": DEV, "width": 64, "height": 64, "steps": 2, "guidance_scale": 3.0, "max_sequence_length": 64}
        i2i = {**base, "prompt": "a red house", "seed": 21, "num_images": 2, "strength": 0.7, "init_image": _png_b64(init_image)}
        reqs = [{**base, "prompt": "a boat", "seed": 1}, {**i2i, "type": "img2img"}, {**base, "prompt": "a tree", "seed": 2}]
        r = w.call("inference.batch_process", {"requests": reqs, "batch_config": {"batch_size": 1, "enable_dynamic_sizing": True}}, timeout=180)
        assert r["success"], r
        items, perf = r["data"]["items"], r["data"]["performance"]
        assert all(it["success"] for it in items), items
        assert [it["parameters"]["batch_group"] for it in items] == [0, 1, 0]
        assert [it["parameters"]["batch_alone"] for it in items] == [False, True, False]
        assert (perf["groups"], perf["pipeline_calls"], perf["batch_sizes"]) == (2, 3, [1, 1, 2])  # batch_size 1 does not split it
        assert any("item 1: img2img on flux_dev models does not batch" in m for m in r["data"]["warnings"]), r["data"]["warnings"]
        alone = w.call("inference.img2img", i2i, timeout=180)
        assert alone["success"], alone
        assert [im["seed"] for im in items[1]["images"]] == [im["seed"] for im in alone["data"]["images"]] == [21, 22]
        for got, want in zip(items[1]["images"], alone["data"]["images"]):
            assert np.array_equal(_decode(got["base64"]), _decode(want["base64"]))
    finally:
        w.kill()


@pytest.mark.parametrize(
    "extra, path",
    [({"clip_skip": 2}, "data.clip_skip"), ({"sampler": "DPM++ 2M"}, "data.sampler"), ({"refiner": {"model": SCHNELL}}, "data.refiner")],
)
def test_worker_refuses_sd_only_options(flux_worker, extra, path):
    r = flux_worker.call("inference.text2img", {"model_id": DEV, "prompt": "x", "steps": 2, "width": 64, "height": 64, **extra})
    assert not r["success"] and r["error_code"] == "validation_error", r
    assert path in [d["path"] for d in r["error_details"]], r


def test_validate_model_smoke_runs_a_fill_model(tmp_path):
    """A Fill model's own pipeline (FluxFillPipeline) needs an image and a mask: the smoke step gives it plain ones."""
    make_tiny_flux("flux-fill", tmp_path / "models" / "tiny-flux-fill")
    (tmp_path / "out").mkdir()
    (tmp_path / "data").mkdir()
    w = Worker(["--models-dir", str(tmp_path / "models")])
    try:
        r = w.call("model.validate_model", {"model_id": "tiny-flux-fill", "smoke": True}, timeout=180)
        assert r["success"] and r["data"]["valid"], r
        assert r["data"]["base_model"] == "flux_dev"
    finally:
        w.kill()
