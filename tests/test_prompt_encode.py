"""Weighted prompt encoding (A1111): faithful to diffusers at weight 1, and wired into generation."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from sdworker.prompts.encode import (
    diffusers_clip_skip,
    encode,
    needs_weighting,
    pipeline_prompt_kwargs,
    prompt_chunks,
)

MODELS = ["tiny-sd15", "tiny-sdxl"]


def _diffusers_embeds(pipe, prompt, negative=None, clip_skip=None):
    """diffusers' own encode_prompt, as a dict like encode()'s."""
    if hasattr(pipe, "text_encoder_2"):
        p, n, pp, npp = pipe.encode_prompt(prompt, device="cpu", negative_prompt=negative, clip_skip=clip_skip)
        return {"prompt_embeds": p, "negative_prompt_embeds": n, "pooled_prompt_embeds": pp, "negative_pooled_prompt_embeds": npp}
    p, n = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative, clip_skip=clip_skip)
    return {"prompt_embeds": p, "negative_prompt_embeds": n}


def _tokenizers(pipe):
    return [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]


# ---- unit: the encoder ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("negative", [None, "ugly, blurry"])
def test_weight_one_equals_diffusers_encode_prompt(pipes, model, negative):
    pipe = pipes[model]
    with torch.no_grad():
        ours = encode(pipe, "a cat", negative)
        theirs = _diffusers_embeds(pipe, "a cat", negative)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].shape == theirs[key].shape, key
        assert torch.allclose(ours[key], theirs[key], atol=1e-6), key


def test_sdxl_clip_skip_follows_diffusers(pipes):
    """A1111 clip_skip 2 is diffusers' clip_skip 1: hidden_states[-3] on SDXL."""
    pipe = pipes["tiny-sdxl"]
    with torch.no_grad():
        ours = encode(pipe, "a cat", None, clip_skip=2)
        p, _, pp, _ = pipe.encode_prompt("a cat", device="cpu", clip_skip=1)
    assert torch.allclose(ours["prompt_embeds"], p, atol=1e-6)
    assert torch.allclose(ours["pooled_prompt_embeds"], pp, atol=1e-6)


def test_sd15_clip_skip_is_the_penultimate_layer_through_the_final_norm(pipes):
    pipe = pipes["tiny-sd15"]
    te = pipe.text_encoder
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ours = encode(pipe, "a cat", None, clip_skip=2)["prompt_embeds"]
        norm = getattr(te, "text_model", te).final_layer_norm
        expected = norm(te(ids, output_hidden_states=True).hidden_states[-2])
        plain = encode(pipe, "a cat", None)["prompt_embeds"]
    assert torch.allclose(ours, expected, atol=1e-6)
    assert not torch.allclose(ours, plain)
    assert diffusers_clip_skip(None) is None and diffusers_clip_skip(1) is None and diffusers_clip_skip(2) == 1


@pytest.mark.parametrize("model", MODELS)
def test_weights_change_the_embeddings_and_restore_the_mean(pipes, model):
    pipe = pipes[model]
    with torch.no_grad():
        plain = encode(pipe, "a cat", None)["prompt_embeds"]
        heavy = encode(pipe, "a (cat:1.5)", None)["prompt_embeds"]
        same = encode(pipe, "a (cat:1.0)", None)["prompt_embeds"]
    assert not torch.allclose(plain, heavy)
    assert torch.allclose(plain, same, atol=1e-6)  # "a " + "cat" tokenize as "a cat"
    dims = [t.config.hidden_size for t in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if t is not None]
    start = 0
    for dim in dims:  # per encoder, as A1111: the mean is restored
        a, b = plain[..., start : start + dim], heavy[..., start : start + dim]
        assert torch.allclose(a.mean(), b.mean(), atol=1e-5)
        start += dim


@pytest.mark.parametrize("model", MODELS)
def test_long_prompts_and_break_make_more_chunks(pipes, model):
    pipe = pipes[model]
    long = "a cat on a mat " * 20  # over 75 tokens, under 150
    assert len(prompt_chunks(long, pipe.tokenizer)) == 2
    with torch.no_grad():
        out = encode(pipe, long, "short")
        brk = encode(pipe, "a cat BREAK a dog", None)
        zeros_neg = encode(pipe, long, None)
    assert out["prompt_embeds"].shape[:2] == (1, 154)
    assert out["negative_prompt_embeds"].shape == out["prompt_embeds"].shape  # padded with an empty chunk
    assert brk["prompt_embeds"].shape[1] == 154
    if "pooled_prompt_embeds" in out:
        first = encode(pipe, "a cat on a mat " * 15, "short")  # the first chunk alone (75 tokens)
        assert torch.allclose(out["pooled_prompt_embeds"], first["pooled_prompt_embeds"], atol=1e-6)
        assert torch.count_nonzero(zeros_neg["negative_prompt_embeds"]) == 0  # force_zeros_for_empty_prompt
        assert torch.count_nonzero(zeros_neg["negative_pooled_prompt_embeds"]) == 0
        assert zeros_neg["negative_prompt_embeds"].shape == zeros_neg["prompt_embeds"].shape


@pytest.mark.parametrize("model", MODELS)
def test_needs_weighting_keeps_plain_text_when_it_can(pipes, model):
    pipe = pipes[model]
    toks = _tokenizers(pipe)
    assert not needs_weighting("a small red house by a lake", "ugly", None, toks)
    assert not needs_weighting("a cat", None, 1, toks)  # clip_skip 1 = the last layer = diffusers' default
    assert not needs_weighting("", None, None, toks)
    assert needs_weighting("a (cat:1.5)", None, None, toks)
    assert needs_weighting("a cat", "[blurry]", None, toks)
    assert needs_weighting("a cat BREAK a dog", None, None, toks)
    assert needs_weighting(r"a \(cat\)", None, None, toks)  # escapes: the text differs from the raw prompt
    assert needs_weighting("a cat " * 40, None, None, toks)  # 80 tokens: over one chunk
    assert needs_weighting("a cat", None, 2, toks)
    assert pipeline_prompt_kwargs(pipe, "a cat", "ugly") == {"prompt": "a cat", "negative_prompt": "ugly"}
    assert pipeline_prompt_kwargs(pipe, "(cat:1.5)", None, None, "none") == {"prompt": "(cat:1.5)", "negative_prompt": None}
    assert "prompt_embeds" in pipeline_prompt_kwargs(pipe, "(cat:1.5)", None)


# ---- protocol: the worker -------------------------------------------------------------------------


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


BASE = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 6.0, "seed": 42}


def _image(worker, **data) -> np.ndarray:
    r = worker.call("inference.text2img", {**BASE, **data}, timeout=180)
    assert r["success"], r
    return _decode(r["data"]["images"][0]["base64"])


def _diffusers_image(pipe, **kwargs) -> np.ndarray:
    out = pipe(
        **kwargs, width=64, height=64, num_inference_steps=2, guidance_scale=6.0,
        generator=[torch.Generator("cpu").manual_seed(42)],
    ).images[0]
    return np.asarray(out.convert("RGB"))


@pytest.mark.parametrize("model", MODELS)
def test_weighted_generation_equals_diffusers_with_our_embeds(worker, pipes, model):
    prompt, negative = "a (red:1.6) house by a [lake]", "ugly, (blurry:1.3)"
    weighted = _image(worker, model_id=model, prompt=prompt, negative_prompt=negative)
    plain = _image(worker, model_id=model, prompt="a red house by a lake", negative_prompt="ugly, blurry")
    assert not np.array_equal(weighted, plain)
    with torch.no_grad():
        kwargs = encode(pipes[model], prompt, negative)
    assert np.array_equal(weighted, _diffusers_image(pipes[model], **kwargs))


@pytest.mark.parametrize("model", MODELS)
def test_prompt_syntax_none_is_the_literal_text(worker, pipes, model):
    got = _image(worker, model_id=model, prompt="a (cat:1.5)", prompt_syntax="none")
    assert np.array_equal(got, _diffusers_image(pipes[model], prompt="a (cat:1.5)"))


def test_long_prompt_generates(worker):
    r = worker.call("inference.text2img", {**BASE, "model_id": "tiny-sdxl", "prompt": "a cat on a mat, " * 30}, timeout=180)
    assert r["success"], r


def test_clip_skip_2_differs_from_none_for_sd15(worker):
    plain = _image(worker, model_id="tiny-sd15", prompt="a cat")
    skipped = _image(worker, model_id="tiny-sd15", prompt="a cat", clip_skip=2)
    assert not np.array_equal(plain, skipped)
    assert np.array_equal(plain, _image(worker, model_id="tiny-sd15", prompt="a cat", clip_skip=1))
    # prompt_syntax none takes clip_skip too (diffusers' SD1 clip_skip path breaks on transformers 5)
    literal = _image(worker, model_id="tiny-sd15", prompt="a cat", clip_skip=2, prompt_syntax="none")
    assert np.array_equal(literal, skipped)


def test_compel_without_compel_is_a_validation_error(worker):
    try:
        import compel  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("compel is installed")
    r = worker.call("inference.text2img", {**BASE, "model_id": "tiny-sd15", "prompt": "a cat++", "prompt_syntax": "compel"})
    assert r["success"] is False and r["error_code"] == "validation_error"
    assert "compel" in r["error"]
    r = worker.call("inference.text2img", {**BASE, "model_id": "tiny-sd15", "clip_skip": 13})
    assert r["error_code"] == "validation_error"


def test_parse_prompt(worker):
    r = worker.call("inference.parse_prompt", {"prompt": "a (house:1.5) [by] a lake BREAK at night"})
    assert r["success"], r
    d = r["data"]
    assert d["chunks"] == [["a ", 1.0], ["house", 1.5], [" ", 1.0], ["by", 1 / 1.1], [" a lake", 1.0], ["BREAK", -1.0], ["at night", 1.0]]
    assert d["model_loaded"] is False and "token_counts" not in d
    _image(worker, model_id="tiny-sdxl", prompt="x")  # now tiny-sdxl is the loaded model
    d = worker.call("inference.parse_prompt", {"prompt": "a (house:1.5) [by] a lake BREAK at night", "model_id": "tiny-sdxl"})["data"]
    assert d["model_loaded"] is True
    assert set(d["token_counts"]) == {"tokenizer", "tokenizer_2"} and set(d["chunks_per_encoder"]) == {"tokenizer", "tokenizer_2"}
    assert d["chunks_per_encoder"]["tokenizer"] == 2 and d["token_counts"]["tokenizer"] >= 6
    long = worker.call("inference.parse_prompt", {"prompt": "a cat on a mat " * 20, "model_id": "tiny-sdxl"})["data"]
    assert long["chunks_per_encoder"] == {"tokenizer": 2, "tokenizer_2": 2} and 75 < long["token_counts"]["tokenizer"] <= 150
    worker.call("model.unload_model", {"model_id": "tiny-sd15"})  # resident from an earlier test, maybe
    other = worker.call("inference.parse_prompt", {"prompt": "x", "model_id": "tiny-sd15"})["data"]
    assert other["model_loaded"] is False  # not loaded, and parse_prompt never loads a model
    status = worker.call("inference.get_status")["data"]
    assert "tiny-sdxl" in status["loaded_models"] and "tiny-sd15" not in status["loaded_models"]


def test_a1111_weight_spacing_and_weighted_break(worker):
    """`(red scarf: 1.1)` weighs as `(red scarf:1.1)`; a BREAK in brackets is the word, as in A1111."""
    d = worker.call("inference.parse_prompt", {"prompt": "a (red scarf: 1.1), (cat BREAK dog)"})["data"]
    assert d["chunks"] == [["a ", 1.0], ["red scarf", 1.1], [", ", 1.0], ["cat", 1.1], ["BREAK", -1.1], ["dog", 1.1]]
    spaced = _image(worker, model_id="tiny-sdxl", prompt="a (red scarf: 1.1 ) on a cat")
    assert np.array_equal(spaced, _image(worker, model_id="tiny-sdxl", prompt="a (red scarf:1.1) on a cat"))
    assert not np.array_equal(spaced, _image(worker, model_id="tiny-sdxl", prompt="a (red scarf:1.2) on a cat"))
    counts = {
        text: worker.call("inference.parse_prompt", {"prompt": text, "model_id": "tiny-sdxl"})["data"]["chunks_per_encoder"]
        for text in ("(cat BREAK dog)", "cat BREAK dog")
    }
    assert counts == {"(cat BREAK dog)": {"tokenizer": 1, "tokenizer_2": 1}, "cat BREAK dog": {"tokenizer": 2, "tokenizer_2": 2}}
