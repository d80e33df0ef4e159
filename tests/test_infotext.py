"""The infotext as A1111 writes it, and hires fix as A1111 counts its steps.

A models dir as a civitai user keeps one: a single-file checkpoint, a standalone VAE file, two
kohya LoRAs and an A1111 embedding. Generations go through one worker; the infotext is read back
with a reference of A1111's ``parse_generation_parameters`` (below) and with sd-parsers, and the
hashes are checked against hashlib over the files.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, strategies as st
from PIL import Image
from sd_parsers import ParserManager

from conftest import Worker
from sdworker.managers import hires, infotext

MODEL = "checkpoints/civitai-sd15"
PROMPT = "a cat, (red scarf:1.1) <lora:style:0.6>"
NEGATIVE = "EasyNegative, blurry"
BASE = {"model_id": MODEL, "width": 64, "height": 64, "steps": 2, "guidance_scale": 5.0, "scheduler": "Euler", "seed": 5}
FULL = {**BASE, "prompt": PROMPT, "negative_prompt": NEGATIVE, "loras": [{"name": "lora/detail", "weight": 0.8}], "vae": "vae/my-vae"}

# A1111's infotext grammar (modules/infotext_utils.py): the last line is "Key: value" pairs, a value
# either a JSON string or text up to the next comma; earlier lines are the prompt, then the negative.
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_a1111(text: str) -> dict[str, str]:
    """A reference of A1111's parse_generation_parameters (without its UI defaults)."""
    *lines, last = text.strip().split("\n")
    if len(PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _addnet(path: Path) -> str:
    """kohya's hash of a .safetensors file: SHA-256 of everything after the header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdworker.tiny import make_tiny_model
    from sdworker.tiny.adapters import make_tiny_embedding, make_tiny_kohya_lora
    from sdworker.tiny.single_file import make_tiny_vae_single_file

    root = tmp_path_factory.mktemp("infotext-models")
    make_tiny_model("sd15", root / "checkpoints" / "civitai-sd15.safetensors", single_file=True)
    make_tiny_vae_single_file("sd15", root / "vae" / "my-vae.safetensors")
    make_tiny_kohya_lora("sd15", root / "lora" / "detail.safetensors", seed=3)
    make_tiny_kohya_lora("sd15", root / "lora" / "style.safetensors", seed=4)
    make_tiny_embedding("sd15", root / "embeddings" / "EasyNegative.safetensors")
    return root


@pytest.fixture(scope="module")
def w(lib: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("infotext-out")
    worker = Worker(["--models-dir", str(lib), "--output-dir", str(out), "--device", "cpu"])
    yield worker
    worker.kill()


@pytest.fixture(scope="module")
def full(w: Worker) -> dict:
    r = w.call("inference.text2img", FULL, timeout=600)
    assert r["success"], r
    return r["data"]


def _pixels(d: dict) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(d["images"][0]["base64"]))).convert("RGB").tobytes()


def test_infotext_has_the_users_words_loras_and_a1111_hashes(full: dict, lib: Path):
    text = full["images"][0]["infotext"]
    assert "<ti-" not in text and "<ti-" not in json.dumps(full["parameters"])
    got = parse_a1111(text)
    # data.loras become tags, as A1111 knows LoRAs (in front: applied first); the user's own tag stays where it was
    assert got["Prompt"] == f"<lora:lora/detail:0.8> {PROMPT}"
    assert got["Negative prompt"] == NEGATIVE
    assert (got["Steps"], got["Sampler"], got["CFG scale"], got["Seed"], got["Size"]) == ("2", "Euler", "5", "5", "64x64")
    assert got["Model"] == MODEL and got["Model hash"] == _sha256(lib / "checkpoints" / "civitai-sd15.safetensors")[:10]
    assert got["VAE"] == "vae/my-vae" and got["VAE hash"] == _sha256(lib / "vae" / "my-vae.safetensors")[:10]
    detail, style = _addnet(lib / "lora" / "detail.safetensors")[:12], _addnet(lib / "lora" / "style.safetensors")[:12]
    assert got["Lora hashes"] == f"lora/detail: {detail}, style: {style}"  # quoted in the text: it holds ':' and ','
    assert '"lora/detail: ' in text
    assert got["TI hashes"] == f"EasyNegative: {_sha256(lib / 'embeddings' / 'EasyNegative.safetensors')[:12]}"
    assert full["parameters"]["hashes"] == {
        "model": got["Model hash"], "vae": got["VAE hash"], "lora:lora/detail": detail, "lora:style": style, "embed:EasyNegative": got["TI hashes"][-12:],
    }


def test_sd_parsers_reads_the_saved_file(full: dict):
    info = ParserManager().parse(Image.open(full["images"][0]["path"]))
    assert info is not None
    sampler = info.samplers[0]
    assert [p.value for p in sampler.prompts] == [f"<lora:lora/detail:0.8> {PROMPT}"]
    assert [p.value for p in sampler.negative_prompts] == [NEGATIVE]
    assert sampler.model is not None and sampler.model.name == MODEL and sampler.model.hash == full["parameters"]["hashes"]["model"]


def test_parameters_and_infotext_prompts_round_trip(w: Worker, full: dict):
    p = full["parameters"]
    assert (p["prompt"], p["negative_prompt"]) == (PROMPT, NEGATIVE)
    again = w.call(
        "inference.text2img",
        {**BASE, "prompt": p["prompt"], "negative_prompt": p["negative_prompt"], "vae": p["vae"], "loras": [{"name": lr["model_id"], "weight": lr["weight"]} for lr in p["loras"] if lr["source"] == "request"]},
        timeout=600,
    )
    assert again["success"], again
    assert (again["data"]["parameters"]["prompt"], again["data"]["parameters"]["negative_prompt"]) == (PROMPT, NEGATIVE)
    assert again["data"]["images"][0]["infotext"] == full["images"][0]["infotext"]
    assert _pixels(again["data"]) == _pixels(full)
    # the infotext's prompt alone (its LoRA tags, no data.loras) makes the same image, as in A1111
    parsed = parse_a1111(full["images"][0]["infotext"])
    alone = w.call("inference.text2img", {**BASE, "prompt": parsed["Prompt"], "negative_prompt": parsed["Negative prompt"], "vae": "vae/my-vae"}, timeout=600)
    assert alone["success"], alone
    assert _pixels(alone["data"]) == _pixels(full)


def test_validate_request_shows_the_users_words(w: Worker):
    checked = w.call("inference.validate_request", FULL)["data"]
    assert checked["valid"], checked
    assert (checked["normalized"]["prompt"], checked["normalized"]["negative_prompt"]) == (PROMPT, NEGATIVE)


def test_lora_tags_in_the_negative_prompt_are_dropped_with_a_warning(w: Worker):
    r = w.call("inference.text2img", {**BASE, "steps": 1, "prompt": "a cat", "negative_prompt": "blurry <lora:detail:1>"}, timeout=600)
    assert r["success"], r
    assert any("negative prompt" in x and "detail" in x and "not applied" in x for x in r["data"]["warnings"]), r["data"]["warnings"]
    assert parse_a1111(r["data"]["images"][0]["infotext"])["Negative prompt"] == "blurry"
    assert "Lora hashes" not in r["data"]["images"][0]["infotext"]


@given(st.text(min_size=1).filter(lambda s: s == s.strip() and not (s.startswith('"') and s.endswith('"')) and "\r" not in s))
def test_quoted_values_read_back_as_written(value: str):
    """Any value survives A1111's parser once quote() has done its work (commas, colons, newlines)."""
    line = f"Steps: 1, Sampler: Euler, Note: {infotext.quote(value)}, Seed: 1"
    got = parse_a1111(f"p\n{line}")
    assert got["Note"] == value and got["Seed"] == "1"


def test_quote_is_a1111s():
    assert infotext.quote("plain") == "plain" and infotext.quote(7.0) == "7" and infotext.quote(0.5) == "0.5"
    assert infotext.quote("a, b") == '"a, b"' and infotext.quote("a: b") == '"a: b"' and infotext.quote('say "x", y') == '"say \\"x\\", y"'
    assert infotext.quote("ü, é") == '"ü, é"'  # ensure_ascii=False, as A1111


# ---- hires fix ------------------------------------------------------------------------------------


def test_hires_runs_its_steps_whatever_the_denoise(w: Worker):
    """hires.steps x denoise < 1 used to end in internal_error; A1111 runs hires.steps steps."""
    req = {**BASE, "prompt": "a cat", "hires": {"steps": 1, "denoise": 0.3}, "session_id": "hires-short"}
    valid = w.call("inference.validate_request", req)["data"]
    assert valid["valid"], valid
    r = w.call("inference.text2img", req, timeout=600)
    assert r["success"], r
    hp = r["data"]["parameters"]["hires"]
    assert (hp["steps"], hp["scheduler_steps"], hp["denoise"]) == (1, 4, 0.3)  # int(4 x 0.3) = 1 step runs
    assert "Hires steps: 1" in r["data"]["images"][0]["infotext"] and "Denoising strength: 0.3" in r["data"]["images"][0]["infotext"]
    status = w.call("inference.get_session_status", {"session_id": "hires-short"})["data"]
    assert status["progress"]["step"] == status["progress"]["total_steps"] == 2 + 1  # first pass + hires steps, as run


def test_hires_validation_agrees_with_the_job(w: Worker):
    req = {**BASE, "prompt": "a cat", "hires": {"steps": 100, "denoise": 0.05}}  # a 2000-step schedule
    checked = w.call("inference.validate_request", req)["data"]
    assert not checked["valid"] and checked["errors"][0]["path"] == "data.hires.denoise", checked
    r = w.call("inference.text2img", req)
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.hires.denoise", r


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20, 150])
@pytest.mark.parametrize("denoise", [1.0, 0.999, 0.75, 0.6, 0.5, 0.35, 0.3, 0.1, 0.05, 0.0071])
def test_scheduler_steps_run_exactly_the_hires_steps(steps: int, denoise: float):
    from types import SimpleNamespace

    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    n = hires.scheduler_steps(steps, denoise)
    assert hires.steps_run(n, denoise) == steps and (n == steps or hires.steps_run(n - 1, denoise) < steps)
    if n <= hires.MAX_SCHEDULER_STEPS:  # diffusers' own count, for both img2img pipelines
        scheduler = EulerDiscreteScheduler()
        scheduler.set_timesteps(n)
        for pipeline in (StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline):
            timesteps, run = pipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), n, denoise, "cpu")
            assert run == len(timesteps) == steps, (pipeline.__name__, n)
