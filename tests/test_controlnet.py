"""ControlNets: planning checks, preprocessors, loading, and parity with plain diffusers pipelines.

"Ours" is what the worker does over a loaded model (plan_controlnets, ControlNetManager,
pipeline_for over the model's pipeline, controlnet_call_kwargs); "plain" is diffusers' own
ControlNet pipeline class loaded with from_pretrained. Same generators, same pixels.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import diffusers
from diffusers import ControlNetModel, DiffusionPipeline
from diffusers.models.controlnets import MultiControlNetModel
from safetensors.torch import save_file

from sdworker.errors import placed
from sdworker.managers import controlnet as cnm
from sdworker.managers import modes, preprocessors
from sdworker.managers.catalog import ModelCatalog
from sdworker.managers.memory import MemoryManager
from sdworker.errors import ModelNotFound, ValidationFailed
from sdworker.tiny.controlnet import make_tiny_controlnet

BASES = {"sd15": "sd_1_5", "sdxl": "sdxl"}
SIZE = 64
STEPS = 2


def _b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def _gen() -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(7)]


@pytest.fixture(scope="module")
def cn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir of ControlNets only: one per arch, a second SD 1.5 one, a single-file copy."""
    root = tmp_path_factory.mktemp("cn-models")
    for arch in ("sd15", "sdxl"):
        make_tiny_controlnet(arch, root / "controlnet" / f"tiny-{arch}-cn")
        make_tiny_controlnet(arch, root / "controlnet" / f"tiny-{arch}-cn-b", seed=99)
    net = ControlNetModel.from_pretrained(str(root / "controlnet" / "tiny-sd15-cn"))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "controlnet" / "tiny-sd15-cn-file.safetensors"))
    return root


@pytest.fixture(scope="module")
def catalog(cn_root: Path) -> ModelCatalog:
    return ModelCatalog([cn_root])


@pytest.fixture(scope="module")
def manager() -> cnm.ControlNetManager:
    return cnm.ControlNetManager(MemoryManager(ram_budget=2**34), lambda name: {"fp32": torch.float32}[name])


@pytest.fixture(scope="module")
def images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(5)
    shapes = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    shapes[8:40, 12:52] = (250, 40, 40)
    shapes[44:60, 4:30] = (30, 200, 90)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    return {
        "control": Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)),
        "shapes": Image.fromarray(shapes),
        "init": Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)),
        "mask": Image.fromarray(mask),
    }


def _model_kwargs(arch: str) -> dict[str, Any]:
    return {"safety_checker": None, "requires_safety_checker": False} if arch == "sd15" else {}


@pytest.fixture(scope="module")
def bases(models_dir: Path) -> dict[str, Any]:
    """Our stand-in for a LoadedPipeline's pipe, per arch."""
    out = {}
    for arch in ("sd15", "sdxl"):
        pipe = DiffusionPipeline.from_pretrained(str(models_dir / f"tiny-{arch}"), **_model_kwargs(arch))
        pipe.set_progress_bar_config(disable=True)
        out[arch] = pipe
    return out


def _plan(specs: list[dict[str, Any]], arch: str, catalog: ModelCatalog, models_dir: Path | None = None) -> list[cnm.ControlSpec]:
    unet = cnm.unet_config(models_dir / f"tiny-{arch}") if models_dir is not None else None
    return cnm.plan_controlnets(specs, BASES[arch], SIZE, SIZE, [], catalog, model_unet=unet)


def _ours(arch: str, mode: str, specs: list[cnm.ControlSpec], bases: dict[str, Any], manager: cnm.ControlNetManager, images: dict[str, Image.Image]) -> np.ndarray:
    nets = [manager.load_spec(s, "fp32").obj for s in specs]
    pipe = cnm.pipeline_for(bases[arch], mode, nets)
    inputs = modes.ModeInputs(images["init"], images["mask"].convert("L")) if mode != "text2img" else modes.ModeInputs()
    kwargs = {
        "prompt": "a cat",
        **modes.call_kwargs(mode, inputs, SIZE, SIZE, 0.8),
        **cnm.controlnet_call_kwargs(type(pipe), specs),
        "num_inference_steps": STEPS,
        "guidance_scale": 7.0,
        "generator": _gen(),
    }
    return _pixels(pipe(**kwargs).images[0])


def _plain(arch: str, cls_name: str, models_dir: Path, cn_root: Path, nets: list[str], **call: Any) -> np.ndarray:
    loaded = [ControlNetModel.from_pretrained(str(cn_root / "controlnet" / n)) for n in nets]
    controlnet = loaded[0] if len(loaded) == 1 else MultiControlNetModel(loaded)
    cls = getattr(diffusers, cls_name)
    pipe = cls.from_pretrained(str(models_dir / f"tiny-{arch}"), controlnet=controlnet, **_model_kwargs(arch))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a cat", num_inference_steps=STEPS, guidance_scale=7.0, generator=_gen(), **call)
    return _pixels(out.images[0])


# ---- preprocessors ----------------------------------------------------------------------------------


def test_canny_finds_the_border_of_a_filled_square_only():
    a = np.zeros((64, 64), dtype=np.uint8)
    a[16:48, 16:48] = 255
    edges = preprocessors.canny_edges(Image.fromarray(a).convert("RGB"))
    border = np.zeros_like(edges)
    border[15:49, 15:49] = True
    border[18:46, 18:46] = False  # a ring 1-2 px either side of the square's outline
    assert edges.any() and not (edges & ~border).any()
    for side in (edges[14:18, 20:44], edges[46:50, 20:44], edges[20:44, 14:18], edges[20:44, 46:50]):
        assert side.any(axis=0 if side.shape[0] < side.shape[1] else 1).all()  # every side fully traced
    assert not preprocessors.canny_edges(Image.new("RGB", (32, 32), (90, 90, 90))).any()
    soft = Image.fromarray((a // 255 * 40).astype(np.uint8)).convert("RGB")  # a step of 40: Sobel L1 <= 4*40*2
    assert preprocessors.canny_edges(soft).any() and not preprocessors.canny_edges(soft, 330, 400).any()
    out = preprocessors.apply("canny", Image.fromarray(a).convert("RGB"))
    assert out.mode == "RGB" and out.size == (64, 64) and set(np.unique(np.asarray(out))) == {0, 255}


def test_other_preprocessors_and_names():
    img = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8)).convert("RGB")
    assert np.array_equal(np.asarray(preprocessors.apply("invert", img))[..., 0], [[255, 155], [55, 0]])
    assert np.array_equal(np.asarray(preprocessors.apply("threshold", img))[..., 0], [[0, 0], [255, 255]])
    assert preprocessors.apply("none", img).tobytes() == img.tobytes()
    assert preprocessors.resolve(None) == "none" and preprocessors.resolve(" Canny ") == "canny"
    assert preprocessors.resolve("invert (from white bg & black line)") == "invert"
    with pytest.raises(ValidationFailed) as exc:
        preprocessors.resolve("openpose", "data.controlnets[1].preprocessor")
    assert exc.value.details[0]["path"] == "data.controlnets[1].preprocessor"
    assert "canny" in exc.value.message and "none" in exc.value.message


# ---- parity with plain diffusers ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_text2img_single_multi_scale_and_range(arch, models_dir, cn_root, catalog, manager, bases, images):
    xl = "XL" if arch == "sdxl" else ""
    cls = f"StableDiffusion{xl}ControlNetPipeline"
    size = {"width": SIZE, "height": SIZE}
    control = images["control"]
    one = _plan([{"model": f"tiny-{arch}-cn", "image": _b64(control)}], arch, catalog, models_dir)
    assert one[0].image.tobytes() == control.tobytes() and one[0].base_model in (BASES[arch], "sd")
    ours = _ours(arch, "text2img", one, bases, manager, images)
    assert np.array_equal(ours, _plain(arch, cls, models_dir, cn_root, [f"tiny-{arch}-cn"], image=control, **size))

    # start/end and the scale are honoured: they change the picture, exactly as diffusers does
    spec = {"model": f"tiny-{arch}-cn", "image": _b64(control), "conditioning_scale": 0.6, "start": 0.5, "end": 1.0}
    ranged = _ours(arch, "text2img", _plan([spec], arch, catalog), bases, manager, images)
    expected = _plain(
        arch, cls, models_dir, cn_root, [f"tiny-{arch}-cn"], image=control,
        controlnet_conditioning_scale=0.6, control_guidance_start=0.5, control_guidance_end=1.0, **size,
    )
    assert np.array_equal(ranged, expected) and not np.array_equal(ranged, ours)

    # scale 0: the ControlNet's residuals are zeros, so the picture is the model's own
    zero = _ours(arch, "text2img", _plan([{**spec, "conditioning_scale": 0}], arch, catalog), bases, manager, images)
    base = bases[arch](prompt="a cat", num_inference_steps=STEPS, guidance_scale=7.0, generator=_gen(), **size).images[0]
    assert np.array_equal(zero, _pixels(base)) and not np.array_equal(zero, ours)

    # two ControlNets (a MultiControlNetModel), the second through canny
    two = [
        {"model": f"tiny-{arch}-cn", "image": _b64(control), "conditioning_scale": 0.7, "end": 0.6},
        {"model": f"tiny-{arch}-cn-b", "image": _b64(images["shapes"]), "preprocessor": "canny", "start": 0.2},
    ]
    planned = _plan(two, arch, catalog, models_dir)
    edges = preprocessors.canny(images["shapes"])
    assert planned[1].image.tobytes() == edges.tobytes()
    kwargs = cnm.controlnet_call_kwargs(getattr(diffusers, cls), planned)
    assert kwargs["controlnet_conditioning_scale"] == [0.7, 1.0] and kwargs["control_guidance_start"] == [0.0, 0.2]
    multi = _ours(arch, "text2img", planned, bases, manager, images)
    expected = _plain(
        arch, cls, models_dir, cn_root, [f"tiny-{arch}-cn", f"tiny-{arch}-cn-b"], image=[control, edges],
        controlnet_conditioning_scale=[0.7, 1.0], control_guidance_start=[0.0, 0.2], control_guidance_end=[0.6, 1.0], **size,
    )
    assert np.array_equal(multi, expected) and not np.array_equal(multi, ours)
    # the model's own pipeline is untouched: still the plain class, no controlnet attached
    assert "ControlNet" not in type(bases[arch]).__name__ and "controlnet" not in bases[arch].components


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_img2img_and_inpainting_with_a_controlnet(arch, models_dir, cn_root, catalog, manager, bases, images):
    xl = "XL" if arch == "sdxl" else ""
    specs = _plan([{"model": f"tiny-{arch}-cn", "image": _b64(images["control"]), "conditioning_scale": 1.5}], arch, catalog)
    common = {"control_image": images["control"], "strength": 0.8, "controlnet_conditioning_scale": 1.5}
    ours = _ours(arch, "img2img", specs, bases, manager, images)
    plain = _plain(arch, f"StableDiffusion{xl}ControlNetImg2ImgPipeline", models_dir, cn_root, [f"tiny-{arch}-cn"], image=images["init"], **common)
    assert np.array_equal(ours, plain)
    ours = _ours(arch, "inpainting", specs, bases, manager, images)
    plain = _plain(
        arch, f"StableDiffusion{xl}ControlNetInpaintPipeline", models_dir, cn_root, [f"tiny-{arch}-cn"],
        image=images["init"], mask_image=images["mask"].convert("L"), width=SIZE, height=SIZE, **common,
    )
    assert np.array_equal(ours, plain)


# ---- loading -----------------------------------------------------------------------------------------


def test_manager_caches_and_loads_single_files(cn_root, catalog, manager, images):
    spec = _plan([{"model": "tiny-sd15-cn", "image": _b64(images["control"])}], "sd15", catalog)[0]
    first = manager.load_spec(spec, "fp32")
    reads = manager.disk_loads
    assert manager.load_spec(spec, "fp32") is first and manager.disk_loads == reads
    assert first.component == "controlnet" and first in manager.loaded()

    single = _plan([{"model": "tiny-sd15-cn-file", "image": _b64(images["control"])}], "sd15", catalog)[0]
    assert single.format == "safetensors" and single.base_model == "sd"
    entry = manager.load_spec(single, "fp32")
    assert entry.key != first.key and manager.disk_loads == reads + 1
    a, b = first.obj.state_dict(), entry.obj.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert manager.load_spec(single, "fp32") is entry  # cached by content

    # a ControlNet the plan could not place is refused once loaded, against the UNet's config
    sdxl_unet = {"cross_attention_dim": 64, "block_out_channels": [32, 64], "addition_embed_type": "text_time"}
    with pytest.raises(ValidationFailed) as exc:
        cnm.check_against_unet(single, entry.obj, sdxl_unet)
    assert exc.value.details[0]["path"] == "controlnets[0].model"


# ---- validation ----------------------------------------------------------------------------------------


def _problems(specs: list[dict[str, Any]], arch: str, catalog: ModelCatalog, models_dir: Path | None = None) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as exc:
        _plan(specs, arch, catalog, models_dir)
    return {d["path"]: d["message"] for d in placed(exc.value, "data")[1]}  # as a native answer names them


def test_plan_errors(catalog, models_dir, images):
    good = _b64(images["control"])
    # a ControlNet for another architecture, with and without the model's UNet config to compare
    for unet_dir in (models_dir, None):
        assert "SDXL" in _problems([{"model": "tiny-sd15-cn", "image": good}], "sdxl", catalog, unet_dir)["data.controlnets[0].model"]
    assert "SDXL ControlNet" in _problems([{"model": "tiny-sdxl-cn", "image": good}], "sd15", catalog)["data.controlnets[0].model"]
    assert "SDXL" in _problems([{"model": "tiny-sd15-cn-file", "image": good}], "sdxl", catalog)["data.controlnets[0].model"]

    found = _problems(
        [
            {"model": "tiny-sd15-cn", "image": good, "start": 0.6, "end": 0.6},
            {"model": "tiny-sd15-cn", "image": good, "conditioning_scale": 2.5, "start": -0.1, "preprocessor": "depth_midas"},
            {"model": "tiny-sd15-cn", "image": "!!!not base64!!!"},
            {"model": "", "image": ""},
            {"model": "tiny-sd15-cn", "image": good, "end": "late"},
        ],
        "sd15",
        catalog,
    )
    assert "greater than start" in found["data.controlnets[0].end"]
    assert "[0, 2]" in found["data.controlnets[1].conditioning_scale"]
    assert "[0, 1]" in found["data.controlnets[1].start"]
    assert "canny" in found["data.controlnets[1].preprocessor"]
    assert "data.controlnets[2].image" in found
    assert {"data.controlnets[3].model", "data.controlnets[3].image"} <= set(found)
    assert "number" in found["data.controlnets[4].end"]

    with pytest.raises(ModelNotFound):
        _plan([{"model": "no-such-controlnet", "image": good}], "sd15", catalog)
    with pytest.raises(ValidationFailed) as exc:  # a family without ControlNets
        cnm.plan_controlnets([{"model": "tiny-sd15-cn", "image": good}], "hidream", SIZE, SIZE, [], catalog)
    assert exc.value.details[0]["path"] == "controlnets"
    with pytest.raises(ValidationFailed) as exc:  # Flux takes Flux ControlNets only
        cnm.plan_controlnets([{"model": "tiny-sd15-cn", "image": good}], "flux_dev", SIZE, SIZE, [], catalog)
    assert exc.value.details[0]["path"] == "controlnets[0].model" and "SD 1.x/2.x ControlNet" in exc.value.details[0]["message"]
    assert cnm.plan_controlnets([], "sdxl", SIZE, SIZE, [], catalog) == []


def test_control_image_is_resized_to_the_output(catalog, images):
    small = images["shapes"].resize((32, 48))
    spec = cnm.plan_controlnets([{"model": "tiny-sd15-cn", "image": _b64(small), "preprocessor": "invert"}], "sd_1_5", 96, 64, [], catalog)[0]
    assert spec.image.size == (96, 64)
    assert spec.describe() == {"model": "controlnet/tiny-sd15-cn", "conditioning_scale": 1.0, "start": 0.0, "end": 1.0, "preprocessor": "invert"}
    assert cnm.infotext_pairs([spec]) == [("ControlNet 0", '"Module: invert, Model: controlnet/tiny-sd15-cn, Weight: 1, Guidance Start: 0, Guidance End: 1"')]


# ---- through the worker (runs once GenerationRequest has `controlnets`) ---------------------------------


def _integrated() -> bool:
    from sdworker.schemas.generation import GenerationRequest

    return "controlnets" in GenerationRequest.model_fields


needs_integration = pytest.mark.skipif(not _integrated(), reason="GenerationRequest has no controlnets field yet")


@pytest.fixture(scope="module")
def cn_worker(models_dir: Path, cn_root: Path, tmp_path_factory: pytest.TempPathFactory):
    from conftest import Worker

    out = tmp_path_factory.mktemp("cn-out")
    w = Worker(["--models-dir", str(models_dir), "--models-dir", str(cn_root), "--output-dir", str(out), "--device", "cpu"])
    yield w
    w.kill()


def _decode(b64: str) -> np.ndarray:
    return _pixels(Image.open(io.BytesIO(base64.b64decode(b64))))


@needs_integration
def test_worker_controlnet_equals_plain_diffusers(cn_worker, models_dir, cn_root, images):
    control = _b64(images["shapes"])
    spec = {"model": "tiny-sd15-cn", "image": control, "preprocessor": "canny", "conditioning_scale": 0.8, "end": 0.9}
    data = {"model_id": "tiny-sd15", "prompt": "a cat", "steps": STEPS, "seed": 7, "width": SIZE, "height": SIZE, "controlnets": [spec]}
    r = cn_worker.call("inference.controlnet", data, timeout=180)
    assert r["success"], r
    expected = _plain(
        "sd15", "StableDiffusionControlNetPipeline", models_dir, cn_root, ["tiny-sd15-cn"], image=preprocessors.canny(images["shapes"]),
        controlnet_conditioning_scale=0.8, control_guidance_end=0.9, width=SIZE, height=SIZE,
    )
    assert np.array_equal(_decode(r["data"]["images"][0]["base64"]), expected)
    params = r["data"]["parameters"]
    assert params["mode"] == "text2img" and params["controlnets"][0]["model"] == "controlnet/tiny-sd15-cn"
    assert params["controlnets"][0]["preprocessor"] == "canny"

    # the C# nested shape through the legacy action; the model stays as it was for plain text2img
    cn_worker.send({
        "action": "execute_controlnet", "request_id": "L-cn",
        "Model": {"Base": "tiny-sd15"}, "Scheduler": {"Steps": STEPS}, "Hyperparameters": {"Seed": 7, "Width": SIZE, "Height": SIZE},
        "Conditioning": {"Prompt": "a cat", "ControlNets": [{"ModelPath": "controlnet/tiny-sd15-cn", "ConditioningImage": control, "Weight": 0.5}]},
    })
    legacy = cn_worker.wait_for(lambda m: isinstance(m, dict) and m.get("request_id") == "L-cn" and m.get("type") != "event", timeout=180)
    assert legacy["success"] is True, legacy
    plain = cn_worker.call("inference.text2img", {k: v for k, v in data.items() if k != "controlnets"}, timeout=180)
    info = cn_worker.call("inference.get_pipeline_info", {"model_id": "tiny-sd15"})["data"]["pipelines"][0]
    assert "ControlNet" not in info["pipeline_class"] and plain["data"]["performance"]["loaded_from"] == "cache"


@needs_integration
def test_worker_controlnet_modes_and_errors(cn_worker, images):
    control = _b64(images["control"])
    two = [{"model": "tiny-sdxl-cn", "image": control}, {"model": "tiny-sdxl-cn-b", "image": control, "start": 0.5}]
    base = {"model_id": "tiny-sdxl", "prompt": "p", "steps": STEPS, "seed": 1}
    r = cn_worker.call("inference.img2img", {**base, "init_image": _b64(images["init"]), "controlnets": two}, timeout=180)
    assert r["success"], r
    assert len(r["data"]["parameters"]["controlnets"]) == 2 and r["data"]["images"][0]["width"] == SIZE
    r = cn_worker.call("inference.inpainting", {**base, "init_image": _b64(images["init"]), "mask_image": _b64(images["mask"]), "controlnets": two[:1]}, timeout=180)
    assert r["success"], r

    r = cn_worker.call("inference.controlnet", base)
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.controlnets"
    r = cn_worker.call("inference.text2img", {**base, "controlnets": [{"model": "tiny-sd15-cn", "image": control}]})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.controlnets[0].model"
    r = cn_worker.call("inference.text2img", {**base, "controlnets": [{"model": "tiny-sdxl-cn", "image": control, "start": 1, "end": 0.5}]})
    assert r["error_details"][0]["path"] == "data.controlnets[0].end"
    r = cn_worker.call("inference.validate_request", {"method": "inference.controlnet", "request": {**base, "controlnets": two}})
    assert r["data"]["valid"] is True and r["data"]["normalized"]["controlnets"][0]["image"].startswith("<")
    r = cn_worker.call("inference.text2img", {**base, "hires": {"scale": 2}, "controlnets": two})
    assert r["error_details"][0]["path"] == "data.hires"
