"""prompt_syntax "compel": our embeddings are compel's own, and the worker's images are plain
diffusers' images with those embeddings (tiny models, 64x64, 2 steps, CPU generators)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from compel import Compel, CompelForSD, CompelForSDXL
from diffusers import DiffusionPipeline, StableDiffusionXLImg2ImgPipeline
from PIL import Image

from sdworker.prompts.compel_syntax import check_compel, compel_prompt_kwargs
from sdworker.prompts.encode import encode, pipeline_prompt_kwargs
from sdworker.errors import ValidationFailed

MODELS = ["tiny-sd15", "tiny-sdxl"]
WEIGHTED = ("a (red)1.3 cube++, blue--", "ugly, blurry-")
BLEND = ('("a red cube", "a blue sphere").and()', "ugly")  # conjunction: 2 chunks vs the negative's 1
KEYS = {
    "embeds": "prompt_embeds",
    "negative_embeds": "negative_prompt_embeds",
    "pooled_embeds": "pooled_prompt_embeds",
    "negative_pooled_embeds": "negative_pooled_prompt_embeds",
}


def _compel_reference(pipe, prompt, negative):
    """compel's own wrappers (CompelForSD / CompelForSDXL), as pipeline kwargs."""
    wrapper = CompelForSDXL(pipe) if hasattr(pipe, "text_encoder_2") else CompelForSD(pipe)
    out = wrapper(prompt, negative_prompt=negative)
    return {key: getattr(out, attr) for attr, key in KEYS.items() if getattr(out, attr) is not None}


def _assert_equal(ours, theirs):
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].shape == theirs[key].shape, key
        assert torch.equal(ours[key], theirs[key]), key


def _image(pipe, **kwargs) -> np.ndarray:
    out = pipe(**kwargs, width=64, height=64, num_inference_steps=2, guidance_scale=6.0, generator=[torch.Generator("cpu").manual_seed(42)])
    return np.asarray(out.images[0].convert("RGB"))


# ---- in process: the embeddings ------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("texts", [WEIGHTED, BLEND], ids=["weighted", "and"])
def test_kwargs_equal_compels_own(pipes, model, texts):
    pipe = pipes[model]
    ours = compel_prompt_kwargs(pipe, *texts, None)
    _assert_equal(ours, _compel_reference(pipe, *texts))
    n = 154 if texts is BLEND else 77
    assert ours["prompt_embeds"].shape[1] == ours["negative_prompt_embeds"].shape[1] == n  # padded to the same length
    _assert_equal(pipeline_prompt_kwargs(pipe, *texts, None, "compel"), ours)


def test_sd15_equals_plain_compel_and_pad(pipes):
    """The plain form: Compel(tokenizer, text_encoder) + pad_conditioning_tensors_to_same_length."""
    pipe = pipes["tiny-sd15"]
    c = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, truncate_long_prompts=False)
    for prompt, negative in (WEIGHTED, BLEND):
        cond, ncond = c.pad_conditioning_tensors_to_same_length([c(prompt), c(negative)])
        _assert_equal(compel_prompt_kwargs(pipe, prompt, negative), {"prompt_embeds": cond, "negative_prompt_embeds": ncond})


def test_weights_matter_and_plain_text_matches_a1111(pipes):
    pipe = pipes["tiny-sdxl"]
    weighted = compel_prompt_kwargs(pipe, "a red++ cube", "ugly")
    plain = compel_prompt_kwargs(pipe, "a red cube", "ugly")
    assert not torch.equal(weighted["prompt_embeds"], plain["prompt_embeds"])
    a1111 = encode(pipe, "a red cube", "ugly")  # no syntax used: the same tokens through the same layers
    for key in plain:
        assert torch.allclose(plain[key], a1111[key], atol=1e-6), key


def test_no_negative(pipes):
    xl = compel_prompt_kwargs(pipes["tiny-sdxl"], "a cat", None)  # force_zeros_for_empty_prompt: zeros, as diffusers
    assert torch.count_nonzero(xl["negative_prompt_embeds"]) == 0 and torch.count_nonzero(xl["negative_pooled_prompt_embeds"]) == 0
    assert xl["negative_prompt_embeds"].shape == xl["prompt_embeds"].shape
    sd = compel_prompt_kwargs(pipes["tiny-sd15"], "a cat", None)  # the empty prompt
    _assert_equal(sd, compel_prompt_kwargs(pipes["tiny-sd15"], "a cat", ""))


def test_clip_skip(pipes):
    sd, xl = pipes["tiny-sd15"], pipes["tiny-sdxl"]
    skipped = compel_prompt_kwargs(sd, "a cat", "ugly", 2)  # compel's PENULTIMATE_HIDDEN_STATES_NORMALIZED
    assert not torch.equal(skipped["prompt_embeds"], compel_prompt_kwargs(sd, "a cat", "ugly", 1)["prompt_embeds"])
    a1111 = encode(sd, "a cat", "ugly", clip_skip=2)
    assert torch.allclose(skipped["prompt_embeds"], a1111["prompt_embeds"], atol=1e-6)
    _assert_equal(compel_prompt_kwargs(xl, "a cat", "ugly", 1), compel_prompt_kwargs(xl, "a cat", "ugly", None))
    for pipe, skip in ((sd, 3), (xl, 2)):
        with pytest.raises(ValidationFailed) as exc:
            compel_prompt_kwargs(pipe, "a cat", None, skip)
        assert exc.value.details[0]["path"] == "clip_skip" and "compel" in exc.value.message


def test_syntax_errors():
    check_compel("a (red cube", "a red) cube", None, False)  # unbalanced parentheses: compel takes them literally
    with pytest.raises(ValidationFailed) as exc:
        check_compel("a cat", '("a", "b").blend(0.5)', None, True)  # two prompts, one weight
    assert [d["path"] for d in exc.value.details] == ["negative_prompt"]


def test_refiner_shaped_pipeline_uses_its_one_encoder(pipes):
    xl = pipes["tiny-sdxl"]
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=xl.vae, text_encoder=None, text_encoder_2=xl.text_encoder_2, tokenizer=None, tokenizer_2=xl.tokenizer_2,
        unet=xl.unet, scheduler=xl.scheduler, requires_aesthetics_score=True,
    )
    out = compel_prompt_kwargs(refiner, *WEIGHTED)
    c = Compel(
        tokenizer=xl.tokenizer_2, text_encoder=xl.text_encoder_2, truncate_long_prompts=False, requires_pooled=True,
        returned_embeddings_type=CompelForSDXL(xl).compel_2.conditioning_provider.returned_embeddings_type,
    )
    z, pooled = c(list(WEIGHTED))
    _assert_equal(out, {"prompt_embeds": z[:1], "negative_prompt_embeds": z[1:], "pooled_prompt_embeds": pooled[:1], "negative_pooled_prompt_embeds": pooled[1:]})


def test_multi_vector_textual_inversion_expands_as_compels_manager(models_dir, tmp_path):
    from compel import DiffusersTextualInversionManager

    from sdworker.tiny.adapters import make_tiny_embedding

    pipe = DiffusionPipeline.from_pretrained(str(models_dir / "tiny-sd15"), safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(make_tiny_embedding("sd15", tmp_path / "emb.safetensors", vectors=3)), token="<emb>")
    prompt = "a (<emb>)1.2 cat"
    ours = compel_prompt_kwargs(pipe, prompt, "ugly")["prompt_embeds"]
    manager = DiffusersTextualInversionManager(pipe)
    c = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, textual_inversion_manager=manager, truncate_long_prompts=False)
    assert torch.equal(ours, c(prompt))
    bare = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, truncate_long_prompts=False)
    assert not torch.equal(ours, bare(prompt))  # three vectors, not one


# ---- the worker ----------------------------------------------------------------------------------

BASE = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 6.0, "seed": 42}


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _worker_image(worker, **data) -> np.ndarray:
    r = worker.call("inference.text2img", {**BASE, "prompt_syntax": "compel", **data}, timeout=180)
    assert r["success"], r
    return _decode(r["data"]["images"][0]["base64"])


@pytest.mark.parametrize("model", MODELS)
def test_worker_image_equals_diffusers_with_compel_embeds(worker, pipes, model):
    pipe = pipes[model]
    images = []
    for prompt, negative in (WEIGHTED, BLEND):
        theirs = _image(pipe, **_compel_reference(pipe, prompt, negative))  # plain diffusers + compel
        assert np.array_equal(_image(pipe, **compel_prompt_kwargs(pipe, prompt, negative)), theirs)
        assert np.array_equal(_worker_image(worker, model_id=model, prompt=prompt, negative_prompt=negative), theirs)
        images.append(theirs)
    a1111 = _worker_image(worker, model_id=model, prompt=WEIGHTED[0], negative_prompt=WEIGHTED[1], prompt_syntax="a1111")
    assert not np.array_equal(a1111, images[0])  # the other syntax: other embeddings


def test_worker_validation_errors_and_literal_parentheses(worker, pipes):
    r = worker.call("inference.text2img", {**BASE, "model_id": "tiny-sd15", "prompt": '("a", "b").blend(0.5)', "prompt_syntax": "compel"})
    assert r["success"] is False and r["error_code"] == "validation_error", r
    assert r["error_details"][0]["path"] == "data.prompt" and "compel" in r["error"]
    r = worker.call("inference.text2img", {**BASE, "model_id": "tiny-sdxl", "prompt": "a cat", "clip_skip": 2, "prompt_syntax": "compel"})
    assert r["success"] is False and r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "data.clip_skip", r
    pipe = pipes["tiny-sd15"]
    got = _worker_image(worker, model_id="tiny-sd15", prompt="a (red cube", clip_skip=2)  # taken literally; clip skip 2 honoured
    assert np.array_equal(got, _image(pipe, **compel_prompt_kwargs(pipe, "a (red cube", None, 2)))


def test_batch_items_with_compel(worker, pipes):
    pipe = pipes["tiny-sd15"]
    reqs = [
        {**BASE, "model_id": "tiny-sd15", "prompt_syntax": "compel", "prompt": WEIGHTED[0], "negative_prompt": WEIGHTED[1]},
        {**BASE, "model_id": "tiny-sd15", "prompt_syntax": "compel", "prompt": "a cat", "negative_prompt": '("a", "b").blend(0.5)'},
        {**BASE, "model_id": "tiny-sd15", "prompt_syntax": "compel", "prompt": BLEND[0], "negative_prompt": BLEND[1]},
    ]
    r = worker.call("inference.batch_process", {"requests": reqs, "batch_config": {"batch_size": 1}}, timeout=180)
    assert r["success"], r
    items = r["data"]["items"]
    assert [it["success"] for it in items] == [True, False, True]
    assert items[1]["error"]["error_code"] == "validation_error" and items[1]["error"]["error_details"][0]["path"] == "data.requests[1].negative_prompt"
    for it, (prompt, negative) in ((items[0], WEIGHTED), (items[2], BLEND)):
        assert np.array_equal(_decode(it["images"][0]["base64"]), _image(pipe, **_compel_reference(pipe, prompt, negative)))
