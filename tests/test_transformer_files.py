"""Flux / HiDream / Wan transformers in one file (.safetensors, .gguf) run with a companion diffusers folder.

The files are written from the tiny folders with changed weights (so a run that used the folder's own
transformer would not pass), the GGUF ones Q8_0-quantized with the gguf package as the public files
are; references are plain diffusers with the transformer loaded by `from_single_file` from the same file.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import cpu_gens, decode_png, family_worker, load_pipes, tiny_models_dir
from sdworker.managers.catalog import ModelCatalog
from sdworker.managers.locator import ModelLocator
from sdworker.models.detect import detect_file
from sdworker.models.gguf_header import GGUFHeaderError, read_gguf_header
from sdworker.errors import ValidationFailed
from sdworker.families.flux.tiny import make_tiny_flux_lora
from sdworker.tiny.transformer_file import ORIGINAL_PREFIX, save_transformer_file
from sdworker.tiny.wan_original import wan_to_original


PROMPT = "a lighthouse on a cliff at dusk"
DEV, SCHNELL_FILE, HIDREAM, WAN, WAN22 = "tiny-flux-dev", "unet/flux1-schnell-tune", "tiny-hidream-dev", "tiny-wan21", "tiny-wan22"
HIGH, LOW, LONE = "diffusion_models/wan2.2_t2v_high_noise_tune", "diffusion_models/wan2.2_t2v_low_noise_tune", "unet/Wan2.2-T2V-A14B-HighNoise-Q8_0"
FLUX_ST, FLUX_GGUF = "diffusion_models/flux1-dev-tune", "diffusion_models/flux1-dev-tune-Q8_0"
HIDREAM_ST, WAN_GGUF, WAN22_FILE = "diffusion_models/hidream-i1-dev-tune", "diffusion_models/wan2.1-t2v-tune-Q8_0", "diffusion_models/wan2.2-t2v-tune"


def _tuned(source: Path, out: Path, prefix: str = "", component: str = "transformer") -> Path:
    """`source`'s transformer with every weight changed a little: a fine-tune of the same architecture."""
    state = load_file(str(save_transformer_file(source, out.with_suffix(".tmp.safetensors"), component=component)))
    gen = torch.Generator().manual_seed(11)
    tuned = {prefix + k: (v * (1 + 0.2 * torch.rand(v.shape, generator=gen))).contiguous() for k, v in state.items()}
    out.with_suffix(".tmp.safetensors").unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tuned, str(out))
    return out


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tiny_models_dir(tmp_path_factory, "tfiles", {DEV: "flux-dev", HIDREAM: "hidream-dev", WAN: "wan21", WAN22: "wan22"})
    scratch = tmp_path_factory.mktemp("tfiles-scratch")
    flux = _tuned(root / DEV, root / f"{FLUX_ST}.safetensors")
    save_transformer_file(flux, root / f"{FLUX_GGUF}.gguf")
    _tuned(root / HIDREAM, root / f"{HIDREAM_ST}.safetensors", prefix=ORIGINAL_PREFIX)  # ComfyUI's key prefix
    wan = load_file(str(_tuned(root / WAN, scratch / "wan.safetensors")))  # as ComfyUI ships Wan: original names, prefixed
    save_file(wan_to_original(wan, ORIGINAL_PREFIX), str(scratch / "wan-comfyui.safetensors"))
    save_transformer_file(scratch / "wan-comfyui.safetensors", root / f"{WAN_GGUF}.gguf")
    save_transformer_file(root / WAN, root / f"{WAN22_FILE}.safetensors")  # a 2.2 name with no Wan 2.2 folder to lend parts
    schnell = tiny_models_dir(tmp_path_factory, "tfiles-schnell", {"s": "flux-schnell"})  # only its transformer is kept
    save_transformer_file(schnell / "s", root / f"{SCHNELL_FILE}.safetensors")
    make_tiny_flux_lora(root / "lora" / "flux-peft.safetensors", "peft", seed=1)
    _tuned(root / WAN22, root / f"{HIGH}.safetensors")  # Wan 2.2 A14B as ComfyUI ships it: one file per expert
    _tuned(root / WAN22, root / f"{LOW}.safetensors", component="transformer_2")
    save_transformer_file(root / WAN22, root / f"{LONE}.gguf")  # a high-noise expert without its twin
    return root


@pytest.fixture(scope="module")
def pipes(models_dir: Path) -> dict:
    return load_pipes(models_dir, (DEV, HIDREAM, WAN, WAN22))


@pytest.fixture(scope="module")
def worker(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    w = family_worker(models_dir, tmp_path_factory, "tfiles")
    yield w
    w.kill()


def _with_file(pipe, path: Path, component: str = "transformer", **more: Path):
    """A plain diffusers pipeline whose transformer (and `more` components) diffusers itself reads from files."""
    loaded = {}
    for name, file in {component: path, **more}.items():
        kwargs = {"config": str(Path(pipe.config._name_or_path)), "subfolder": name, "local_files_only": True}
        if file.suffix == ".gguf":
            from diffusers import GGUFQuantizationConfig

            kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=torch.float32)
        loaded[name] = type(getattr(pipe, name)).from_single_file(str(file), **kwargs)
    accepted = inspect.signature(type(pipe).__init__).parameters
    scalars = {k: v for k, v in pipe.config.items() if k in accepted and k not in pipe.components}  # Wan 2.2's boundary_ratio, ...
    return type(pipe)(**{**pipe.components, **scalars, **loaded})


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


# ---- detection and discovery ----------------------------------------------------------------------------


def test_files_are_detected_and_listed(models_dir, worker):
    gguf = detect_file(models_dir / f"{FLUX_GGUF}.gguf")
    assert (gguf.kind, gguf.base_model, gguf.format) == ("unet", "flux_dev", "gguf")
    assert gguf.details["quantization"] == "Q8_0" and gguf.details["variant"] == "dev"
    assert detect_file(models_dir / f"{HIDREAM_ST}.safetensors").base_model == "hidream"
    assert detect_file(models_dir / f"{WAN_GGUF}.gguf").details["layout"] == "original"  # ComfyUI's names, converted by diffusers
    assert (detect_file(models_dir / f"{WAN_GGUF}.gguf").base_model, detect_file(models_dir / f"{WAN22_FILE}.safetensors").base_model) == ("wan_2_1", "wan_2_2")
    from sdworker.models.detect import detect
    from sdworker.models.safetensors_header import read_header

    expert = read_header(models_dir / f"{HIGH}.safetensors").shapes()  # A14B experts have Wan 2.1's shapes: the name tells
    assert [detect(expert, None, n).base_model for n in ("wan-14B.safetensors", "A14B-LowNoise.safetensors", "wan2.2_t2v_14B.safetensors")] == [
        "wan_2_1", "wan_2_2", "wan_2_2"]
    r = worker.call("model.list_models", {})
    items = {i["model_id"]: i for i in r["data"]["items"]}
    assert (items[FLUX_GGUF]["kind"], items[FLUX_GGUF]["format"], items[FLUX_GGUF]["base_model"]) == ("unet", "gguf", "flux_dev")


def test_metadata_and_validate_model_read_gguf_files(worker):
    meta = worker.call("model.get_metadata", {"model_id": FLUX_GGUF})
    assert meta["success"], meta
    assert (meta["data"]["format"], meta["data"]["details"]["quantization"], meta["data"]["metadata"].get("general.architecture")) == ("gguf", "Q8_0", "flux")
    r = worker.call("model.validate_model", {"model_id": FLUX_GGUF, "smoke": True}, timeout=180)
    assert r["success"] and r["data"]["valid"], r
    assert [c["name"] for c in r["data"]["checks"]][-2:] == ["loadable", "smoke"]


def test_companions_are_chosen_by_base_model_and_shape(models_dir):
    locator = ModelLocator([models_dir], ModelCatalog([models_dir]))
    flux = locator.resolve(FLUX_GGUF)
    assert (flux.path, flux.transformer_file, flux.components_from, flux.weights_format) == (
        models_dir / DEV, (models_dir / f"{FLUX_GGUF}.gguf").resolve(), DEV, "gguf")
    assert flux.describe() == {"model_id": FLUX_GGUF, "base_model": "flux_dev", "components_from": DEV}
    assert locator.resolve(HIDREAM_ST).components_from == HIDREAM and locator.resolve(WAN_GGUF).components_from == WAN
    with pytest.raises(ValidationFailed, match="guidance embedder"):  # a schnell file cannot borrow a dev folder's transformer config
        locator.resolve(SCHNELL_FILE)
    with pytest.raises(ValidationFailed, match="two transformer experts"):  # one 2.2 file cannot stand for both experts
        locator.resolve(WAN22_FILE)
    pair = locator.resolve(LOW)  # either expert names the pair
    assert (pair.transformer_file.name, pair.transformer_2_file.name, pair.components_from) == (
        Path(HIGH).name + ".safetensors", Path(LOW).name + ".safetensors", WAN22)
    with pytest.raises(ValidationFailed, match="LowNoise-Q8_0.gguf"):
        locator.resolve(LONE)
    assert {r.model_id for r in locator.scan()} >= {DEV, FLUX_ST, FLUX_GGUF, HIDREAM_ST, WAN_GGUF}


# ---- generation: parity with diffusers ---------------------------------------------------------------------


@pytest.mark.parametrize("model_id, suffix", [(FLUX_ST, ".safetensors"), (FLUX_GGUF, ".gguf")])
def test_flux_transformer_file_equals_diffusers(worker, pipes, models_dir, model_id, suffix):
    req = {"model_id": model_id, "prompt": PROMPT, "width": 64, "height": 64, "steps": 2, "seed": 21}
    r = worker.call("inference.text2img", req, timeout=180)
    assert r["success"], r
    params = r["data"]["parameters"]
    assert (params["model_id"], params["base_model"], params["components_from"]) == (model_id, "flux_dev", DEV)
    pipe = _with_file(pipes[DEV], models_dir / f"{model_id}{suffix}")
    expected = pipe(prompt=PROMPT, width=64, height=64, num_inference_steps=2, guidance_scale=params["guidance_scale"], generator=cpu_gens(21)).images[0]
    got = decode_png(r["data"]["images"][0]["base64"])
    assert np.array_equal(got, _rgb(expected))
    folder = pipes[DEV](prompt=PROMPT, width=64, height=64, num_inference_steps=2, guidance_scale=params["guidance_scale"], generator=cpu_gens(21)).images[0]
    assert not np.array_equal(got, _rgb(folder))  # the file's weights ran, not the companion's transformer


def test_lora_on_a_gguf_transformer_equals_diffusers(worker, pipes, models_dir):
    req = {"model_id": FLUX_GGUF, "prompt": PROMPT, "width": 64, "height": 64, "steps": 2, "seed": 4, "guidance_scale": 3.5,
           "loras": [{"name": "lora/flux-peft", "weight": 0.7}]}
    r = worker.call("inference.text2img", req, timeout=180)
    assert r["success"], r
    pipe = _with_file(pipes[DEV], models_dir / f"{FLUX_GGUF}.gguf")
    pipe.load_lora_weights(str(models_dir / "lora" / "flux-peft.safetensors"), adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[0.7])
    expected = pipe(prompt=PROMPT, width=64, height=64, num_inference_steps=2, guidance_scale=3.5, generator=cpu_gens(4)).images[0]
    got = decode_png(r["data"]["images"][0]["base64"])
    assert np.array_equal(got, _rgb(expected))
    plain = worker.call("inference.text2img", {k: v for k, v in req.items() if k != "loras"}, timeout=180)
    assert not np.array_equal(got, decode_png(plain["data"]["images"][0]["base64"]))  # the LoRA did something, and rests after


def test_batch_keeps_a_transformer_file_apart_from_its_companion(worker):
    """The file and its companion folder share a path but not a transformer: two groups, each image its own request's."""
    base = {"prompt": PROMPT, "width": 64, "height": 64, "steps": 2, "seed": 21, "guidance_scale": 3.5}
    reqs = [{**base, "model_id": DEV}, {**base, "model_id": FLUX_GGUF}]
    r = worker.call("inference.batch_process", {"requests": reqs, "batch_config": {"batch_size": 4}}, timeout=180)
    assert r["success"] and all(it["success"] for it in r["data"]["items"]), r
    assert r["data"]["performance"]["groups"] == 2
    for req, item in zip(reqs, r["data"]["items"]):
        alone = worker.call("inference.text2img", req, timeout=180)
        assert np.array_equal(decode_png(item["images"][0]["base64"]), decode_png(alone["data"]["images"][0]["base64"]))


def test_gguf_stays_quantized_in_the_cache(worker):
    for model_id in (FLUX_ST, FLUX_GGUF):
        assert worker.call("model.load_unet", {"model_id": model_id, "device": "ram"})["success"]
    entries = worker.call("model.get_cache_status", {})["data"]["entries"]
    size = {Path(e["source"]).suffix: e["bytes"] for e in entries if e["component"] == "transformer" and "diffusion_models" in e["source"]}
    assert size[".gguf"] < 0.5 * size[".safetensors"], size  # Q8_0: about a byte per weight, against fp32's four


def test_hidream_file_with_comfyui_prefix_equals_diffusers(worker, pipes, models_dir):
    req = {"model_id": HIDREAM_ST, "prompt": PROMPT, "width": 128, "height": 128, "steps": 2, "seed": 3}
    r = worker.call("inference.text2img", req, timeout=240)
    assert r["success"], r
    pipe = _with_file(pipes[HIDREAM], models_dir / f"{HIDREAM_ST}.safetensors")
    expected = pipe(prompt=PROMPT, width=128, height=128, num_inference_steps=2, guidance_scale=0.0, generator=cpu_gens(3)).images[0]
    assert np.array_equal(decode_png(r["data"]["images"][0]["base64"]), _rgb(expected))


def test_wan_original_layout_round_trips_through_diffusers_converter(models_dir):
    """Our renaming is diffusers' run backwards: converting it forward gives every diffusers key back."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    for folder in (WAN, WAN22):
        state = load_file(str(models_dir / folder / "transformer" / "diffusion_pytorch_model.safetensors"))
        original = wan_to_original(state, ORIGINAL_PREFIX)
        assert "model.diffusion_model.blocks.0.self_attn.q.weight" in original and "model.diffusion_model.head.modulation" in original
        back = convert_wan_transformer_to_diffusers(dict(original))
        assert set(back) == set(state) and all(back[k] is state[k] for k in state)


def test_wan_gguf_text2video_equals_diffusers(worker, pipes, models_dir):
    small = {"width": 64, "height": 64, "num_frames": 5}
    req = {"model_id": WAN_GGUF, "prompt": PROMPT, **small, "steps": 2, "seed": 8, "output": {"frames": True, "return_base64": False}}
    r = worker.call("inference.text2video", req, timeout=240)
    assert r["success"], r
    video = r["data"]["videos"][0]
    assert r["data"]["parameters"]["components_from"] == WAN
    pipe = _with_file(pipes[WAN], models_dir / f"{WAN_GGUF}.gguf")
    expected = pipe(prompt=PROMPT, **small, num_inference_steps=2, generator=cpu_gens(8), output_type="np").frames[0]
    got = np.stack([decode_png(f) for f in video["frames"]])
    assert np.array_equal(got, (expected * 255).round().clip(0, 255).astype(np.uint8))


def test_wan22_expert_pair_equals_diffusers(worker, pipes, models_dir):
    small = {"width": 64, "height": 64, "num_frames": 5}
    req = {"model_id": HIGH, "prompt": PROMPT, **small, "steps": 4, "seed": 6, "guidance_scale": 4.0, "guidance_scale_2": 3.0,
           "output": {"frames": True, "return_base64": False}}
    r = worker.call("inference.text2video", req, timeout=240)
    assert r["success"], r
    assert r["data"]["parameters"]["components_from"] == WAN22
    pipe = _with_file(pipes[WAN22], models_dir / f"{HIGH}.safetensors", transformer_2=models_dir / f"{LOW}.safetensors")
    expected = pipe(prompt=PROMPT, **small, num_inference_steps=4, guidance_scale=4.0, guidance_scale_2=3.0, generator=cpu_gens(6), output_type="np").frames[0]
    got = np.stack([decode_png(f) for f in r["data"]["videos"][0]["frames"]])
    assert np.array_equal(got, (expected * 255).round().clip(0, 255).astype(np.uint8))
    folder = pipes[WAN22](prompt=PROMPT, **small, num_inference_steps=4, guidance_scale=4.0, guidance_scale_2=3.0, generator=cpu_gens(6), output_type="np").frames[0]
    assert not np.array_equal(got, (folder * 255).round().clip(0, 255).astype(np.uint8))


# ---- clear errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, code, path",
    [
        ({"model_id": FLUX_GGUF, "precision": {"storage_dtype": "fp8_e4m3fn"}}, "validation_error", "data.precision.storage_dtype"),
        ({"model_id": SCHNELL_FILE}, "validation_error", "data.model_id"),
        ({"model_id": WAN22_FILE}, "validation_error", "data.model_id"),
        ({"model_id": LONE}, "validation_error", "data.model_id"),
    ],
)
def test_unrunnable_files_answer_clear_errors(worker, data, code, path):
    r = worker.call("inference.text2img", {"prompt": "x", "width": 64, "height": 64, "steps": 1, **data})
    assert not r["success"] and r["error_code"] == code, r
    assert path in [d["path"] for d in r["error_details"]], r


def test_a_file_that_does_not_fit_its_companion_is_a_load_error(models_dir, tmp_path):
    """Same keys, other widths: diffusers refuses the shapes, the worker answers model_load_failed."""
    from sdworker.managers.transformer_files import load
    from sdworker.errors import ModelLoadFailed
    from diffusers import FluxTransformer2DModel

    state = load_file(str(models_dir / f"{FLUX_ST}.safetensors"))
    bad = tmp_path / "bad.safetensors"
    save_file({k: torch.zeros(*(2 * d for d in v.shape)) for k, v in state.items()}, str(bad))
    with pytest.raises(ModelLoadFailed, match="could not be loaded with the config of"):
        load(FluxTransformer2DModel, bad, models_dir / DEV, torch.float32, {})


# ---- the GGUF header reader ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=256))
def test_gguf_reader_turns_garbage_into_one_clear_error(tmp_path_factory, blob):
    """Any bytes after the magic: a header (an empty file may be valid) or GGUFHeaderError, nothing else."""
    path = tmp_path_factory.mktemp("gguf") / "x.gguf"
    path.write_bytes(b"GGUF" + blob)
    try:
        header = read_gguf_header(path)
    except GGUFHeaderError as exc:
        assert "GGUF" in str(exc)
    else:
        assert isinstance(header.shapes, dict)


def test_gguf_reader_names_a_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(GGUFHeaderError, match="not a GGUF file"):
        read_gguf_header(path)


# ---- BFL's own layout (flux1-dev.safetensors) ---------------------------------------------------------------


def test_bfl_layout_of_the_tiny_transformer_is_detected_as_bfl(models_dir):
    from sdworker.models.detect import detect
    from sdworker.tiny.flux_bfl import flux_to_bfl

    bfl = flux_to_bfl(load_file(str(models_dir / DEV / "transformer" / "diffusion_pytorch_model.safetensors")))
    found = detect({k: tuple(v.shape) for k, v in bfl.items()}, None, "flux1-dev.safetensors")
    assert (found.kind, found.base_model, found.details["layout"], found.details["variant"]) == ("unet", "flux_dev", "original", "dev")
    assert {"img_in.weight", "double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "final_layer.adaLN_modulation.1.weight"} <= set(bfl)


@pytest.mark.skipif(not os.environ.get("SDWORKER_SLOW"), reason="a FLUX.1-width transformer block (about 2 GB of RAM); set SDWORKER_SLOW=1")
def test_bfl_layout_file_at_flux_width_loads_exactly(tmp_path):
    """diffusers' BFL converter assumes FLUX.1's width, so this one check runs at it (one block of each kind):
    a BFL-layout file read through transformer_files.load gives back every weight exactly."""
    from diffusers import FluxTransformer2DModel

    from sdworker.managers.transformer_files import load
    from sdworker.tiny.flux_bfl import flux_to_bfl

    torch.manual_seed(0)
    model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56]).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "flux-width" / "transformer")
    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in flux_to_bfl(state).items()}, str(tmp_path / "flux1-dev.safetensors"))
    del model
    loaded = load(FluxTransformer2DModel, tmp_path / "flux1-dev.safetensors", tmp_path / "flux-width", torch.bfloat16, {}).state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
