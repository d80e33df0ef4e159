"""LoRAs (named PEFT adapters on shared modules), A1111 LoRA tags and textual inversion, in-process.

Pipelines come from the tiny model folders; every comparison is pixel for pixel against plain
diffusers doing the same thing (load_lora_weights + set_adapters, load_textual_inversion).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sdworker.errors import ModelLoadFailed, ValidationFailed
from sdworker.managers.adapters import AdapterManager, LoRAUse, PlannedLoRA, adapter_name, check_base
from sdworker.managers.catalog import ModelCatalog
from sdworker.managers.embeddings import EmbeddingManager, find_triggered, find_triggers, rewrite, select
from sdworker.managers.lora import LoRAManager
from sdworker.managers.memory import MemoryManager
from sdworker.prompts.lora_tags import extract_lora_tags
from sdworker.tiny.adapters import make_tiny_embedding, make_tiny_kohya_lora, make_tiny_peft_lora

PROMPT = "a photo of a cat"
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # PEFT: a second adapter


@pytest.fixture(scope="module", autouse=True)
def _quiet() -> Any:
    import transformers
    from diffusers.utils import logging as dlog

    before = (transformers.logging.get_verbosity(), dlog.get_verbosity())
    transformers.logging.set_verbosity_error()
    dlog.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(before[0])
    dlog.set_verbosity(before[1])


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with the adapters only (lora/, embeddings/); the tiny models come from models_dir."""
    root = tmp_path_factory.mktemp("adapters")
    make_tiny_kohya_lora("sd15", root / "lora" / "k15")
    make_tiny_kohya_lora("sd15", root / "lora" / "k15b", seed=5, te=False)
    make_tiny_peft_lora("sd15", root / "lora" / "p15")
    make_tiny_kohya_lora("sdxl", root / "lora" / "kxl")
    make_tiny_embedding("sd15", root / "embeddings" / "tinyemb", vectors=2)
    make_tiny_embedding("sdxl", root / "embeddings" / "xlemb", vectors=2)
    return root


@pytest.fixture(scope="module")
def catalog(adapters_dir: Path) -> ModelCatalog:
    return ModelCatalog([adapters_dir], ttl=3600)


@pytest.fixture(scope="module")
def loras() -> LoRAManager:
    return LoRAManager(MemoryManager(ram_budget=2**30))


def fresh(models_dir: Path, arch: str) -> Any:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(models_dir / f"tiny-{arch}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe: Any, prompt: str = PROMPT, negative: str | None = None) -> np.ndarray:
    out = pipe(
        prompt, negative_prompt=negative, num_inference_steps=2, width=64, height=64,
        generator=torch.Generator("cpu").manual_seed(0), output_type="np",
    )
    return (out.images[0] * 255).round().astype(np.int16)


def use(catalog: ModelCatalog, loras: LoRAManager, name: str, weight: float) -> LoRAUse:
    item = catalog.find(name, "lora")
    return AdapterManager.load(loras, [PlannedLoRA(name, item, weight, "request")])[0]


@pytest.fixture(scope="module")
def base15(models_dir: Path) -> np.ndarray:
    return image(fresh(models_dir, "sd15"))


# ---- LoRAs -------------------------------------------------------------------------------------------


def test_kohya_sd15_equals_diffusers_and_weight_zero_is_base(models_dir, catalog, loras, base15):
    am = AdapterManager()
    pipe = fresh(models_dir, "sd15")
    k15 = use(catalog, loras, "k15", 0.8)
    with am.applied(pipe, [k15], "tiny-sd15", "sd_1_5"):
        ours = image(pipe)
    ref = fresh(models_dir, "sd15")
    ref.load_lora_weights(str(catalog.find("k15").path), adapter_name="k15")
    ref.set_adapters(["k15"], adapter_weights=[0.8])
    assert np.array_equal(ours, image(ref))
    assert np.abs(ours - base15).mean() > 2  # the LoRA visibly changes the image
    from safetensors.torch import load_file

    on_disk = load_file(str(catalog.find("k15").path))
    assert all(torch.equal(v, on_disk[k]) for k, v in k15.entry.obj.items())  # the cached tensors are as read

    # after the block the shared modules rest with LoRA off: exactly the base model
    assert np.array_equal(image(pipe), base15)
    assert am.injected(pipe.unet) == am.injected(pipe.text_encoder) == [adapter_name(k15.entry)]
    for loras_now in ([k15._replace(weight=0.0)], []):
        with am.applied(pipe, loras_now, "tiny-sd15", "sd_1_5"):
            assert np.array_equal(image(pipe), base15)
    assert am.injections == 1


def test_switching_sets_reuses_injected_adapters(models_dir, catalog, loras):
    am = AdapterManager()
    pipe = fresh(models_dir, "sd15")
    unet = pipe.unet
    k15, p15, k15b = (use(catalog, loras, n, w) for n, w in (("k15", 0.7), ("p15", 0.5), ("k15b", 0.6)))
    reads = loras.disk_loads
    first = []
    for _ in range(2):
        for chosen in ([k15], [p15, k15b], []):
            with am.applied(pipe, chosen, "tiny-sd15", "sd_1_5"):
                first.append(image(pipe))
    assert am.injections == 3  # one per LoRA, never again on switching
    assert pipe.unet is unet and loras.disk_loads == reads  # the base is not reloaded, nor the LoRAs
    assert [np.array_equal(a, b) for a, b in zip(first[:3], first[3:])] == [True, True, True]
    with pytest.raises(RuntimeError), am.applied(pipe, [k15], "tiny-sd15", "sd_1_5"):
        raise RuntimeError("the run failed")
    assert np.array_equal(image(pipe), first[2])  # LoRA layers are off after a failed run too
    assert sorted(am.injected(unet)) == sorted(adapter_name(u.entry) for u in (k15, p15, k15b))
    assert adapter_name(k15b.entry) not in am.injected(pipe.text_encoder)  # no TE part: nothing injected there

    ref = fresh(models_dir, "sd15")
    ref.load_lora_weights(str(catalog.find("p15").path), adapter_name="p")
    ref.load_lora_weights(str(catalog.find("k15b").path), adapter_name="kb")
    ref.set_adapters(["p", "kb"], adapter_weights=[0.5, 0.6])
    assert np.array_equal(first[1], image(ref))

    # a mode pipeline over the same modules reuses the adapters too
    from diffusers import AutoPipelineForImage2Image

    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    with am.applied(img2img, [k15], "tiny-sd15", "sd_1_5"):
        pass
    assert am.injections == 3


def test_sdxl_kohya_with_both_text_encoders(models_dir, catalog, loras):
    am = AdapterManager()
    pipe = fresh(models_dir, "sdxl")
    base = image(pipe)
    kxl = use(catalog, loras, "kxl", 0.9)
    assert kxl.base_model == "sdxl"
    with am.applied(pipe, [kxl], "tiny-sdxl", "sdxl"):
        ours = image(pipe)
    name = adapter_name(kxl.entry)
    for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        assert am.injected(module) == [name]
    ref = fresh(models_dir, "sdxl")
    ref.load_lora_weights(str(catalog.find("kxl").path), adapter_name="kxl")
    ref.set_adapters(["kxl"], adapter_weights=[0.9])
    assert np.array_equal(ours, image(ref))
    assert np.abs(ours - base).mean() > 2
    assert np.array_equal(image(pipe), base)


def test_wrong_base_is_refused_with_both_bases(models_dir, catalog, loras):
    with pytest.raises(ValidationFailed) as plan_err:
        AdapterManager.plan(catalog, [("k15", 1.0, "request")], "tiny-sdxl", "sdxl")
    msg = plan_err.value.message
    assert "'lora/k15'" in msg and "sd_1_5" in msg and "sdxl" in msg and "tiny-sdxl" in msg
    check_base("x", "pony", "m", "sdxl")  # same family
    check_base("x", "unknown", "m", "sdxl")  # nothing to tell: diffusers decides

    # past the catalog (base unknown), diffusers' shape mismatch: a clear error, nothing left behind
    am = AdapterManager()
    pipe = fresh(models_dir, "sdxl")
    base = image(pipe)
    wrong = use(catalog, loras, "k15", 1.0)._replace(base_model="unknown")
    with pytest.raises(ModelLoadFailed) as load_err:
        am.apply(pipe, [wrong], "tiny-sdxl", "sdxl")
    assert "'lora/k15'" in load_err.value.message and "tiny-sdxl" in load_err.value.message
    assert len(load_err.value.message) < 700
    assert not any(getattr(m, "peft_config", None) for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2))
    with am.applied(pipe, [], "tiny-sdxl", "sdxl"):
        assert np.array_equal(image(pipe), base)
    assert am.injections == 0


def test_missing_corrupt_and_non_lora_files(tmp_path, catalog, loras, models_dir):
    from sdworker.managers.catalog import CatalogItem

    def planned(path: Path) -> PlannedLoRA:
        item = CatalogItem(path.stem, "lora", "unknown", "safetensors", path, 0, 0.0, tmp_path)
        return PlannedLoRA(path.stem, item, 1.0, "request")

    with pytest.raises(ModelLoadFailed, match="gone"):
        AdapterManager.load(loras, [planned(tmp_path / "gone.safetensors")])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelLoadFailed, match="bad"):
        AdapterManager.load(loras, [planned(bad)])
    from safetensors.torch import save_file

    other = tmp_path / "notalora.safetensors"
    save_file({"some.weight": torch.zeros(2, 2)}, str(other))
    (entry,) = AdapterManager.load(loras, [planned(other)])
    with pytest.raises(ModelLoadFailed, match="notalora"):
        AdapterManager().apply(fresh(models_dir, "sd15"), [entry], "tiny-sd15", "sd_1_5")
    with pytest.raises(Exception) as not_found:
        AdapterManager.plan(catalog, [("nope", 1.0, "request")], "tiny-sd15", "sd_1_5")
    assert getattr(not_found.value, "code", None) == "model_not_found"


# ---- A1111 tags ----------------------------------------------------------------------------------------


def test_lora_tags():
    assert extract_lora_tags("a cat <lora:k15:0.8>, best") == ("a cat , best", [("k15", 0.8)])
    assert extract_lora_tags("<lora:k15>") == ("", [("k15", 1.0)])
    assert extract_lora_tags("x < LyCo : my lora : -0.5 > y") == ("x  y", [("my lora", -0.5)])
    assert extract_lora_tags("<lora:a:0.6:0.2><lora:b:unet=0.3>") == ("", [("a", 0.6), ("b", 1.0)])
    assert extract_lora_tags("keep <lora:a:abc> and <lora::1> and <hypernet:h:1>") == ("keep <lora:a:abc> and <lora::1> and <hypernet:h:1>", [])
    assert extract_lora_tags("(a <lora:x:.5> cat:1.2)") == ("(a  cat:1.2)", [("x", 0.5)])


_pieces = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=12),
        st.builds(lambda n, w: f"<lora:{n}:{w}>", st.text(alphabet="abcXYZ_- 09", min_size=1, max_size=8).filter(str.strip), st.floats(-5, 5, allow_nan=False).map(lambda f: round(f, 3))),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(_pieces)
def test_lora_tags_property(pieces):
    text = "".join(pieces)
    out, tags = extract_lora_tags(text)
    assert out == "".join(p for p in pieces if not p.startswith("<lora:"))  # text outside tags kept
    assert [n for n, _ in tags] == [p[6:].rsplit(":", 1)[0].strip() for p in pieces if p.startswith("<lora:")]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_lora_tags_never_raise(text):
    out, tags = extract_lora_tags(text)
    assert len(out) <= len(text)
    assert all(isinstance(n, str) and isinstance(w, float) for n, w in tags)


# ---- textual inversion ---------------------------------------------------------------------------------------


def embeddings(catalog: ModelCatalog) -> list[Any]:
    return [i for i in catalog.items() if i.kind == "embedding"]


def test_triggers(catalog):
    items = embeddings(catalog)
    assert [i.model_id for i in find_triggers("a (TinyEmb:1.2) cat", None, items)] == ["embeddings/tinyemb"]
    assert [i.model_id for i in find_triggers("a cat", "xlemb, blurry", items)] == ["embeddings/xlemb"]
    assert find_triggers("tinyembs and xtinyemb", "", items) == []
    hit = find_triggered("A TINYEMB cat, (tinyemb:1.2)", None, items)
    token = hit[0].token
    assert rewrite("A TINYEMB cat, (tinyemb:1.2)", hit) == f"A {token} cat, ({token}:1.2)"
    both = find_triggered("tinyemb xlemb", None, items)
    kept, warnings = select(both, "sdxl")  # a single-encoder embedding never fits SDXL: its word stays text
    assert [t.trigger for t in kept] == ["xlemb"] and "tinyemb" in warnings[0]
    kept, warnings = select(both, "sd_1_5")
    assert [t.trigger for t in kept] == ["tinyemb"] and "xlemb" in warnings[0]
    assert select(both[:1], "unknown") == (both[:1], [])  # nothing known: the exact width check decides


@pytest.mark.parametrize("where", ["prompt", "negative"])
def test_sd15_embedding_equals_diffusers(models_dir, catalog, base15, where):
    em = EmbeddingManager()
    pipe = fresh(models_dir, "sd15")
    prompt, negative = (f"{PROMPT}, TinyEmb", None) if where == "prompt" else (PROMPT, "tinyemb")
    hit = find_triggered(prompt, negative, embeddings(catalog))
    assert em.ensure_loaded(pipe, hit, "tiny-sd15") == []
    em.ensure_loaded(pipe, [t.item for t in hit], "tiny-sd15")  # again: nothing added twice
    token = hit[0].token
    assert em.loads == 1 and f"{token}_1" in pipe.tokenizer.get_vocab() and token.startswith("<ti-tinyemb-")
    ours = image(pipe, rewrite(prompt, hit), rewrite(negative, hit))

    ref = fresh(models_dir, "sd15")
    ref.load_textual_inversion(str(catalog.find("tinyemb").path), token="tinyemb")
    assert np.array_equal(ours, image(ref, prompt.lower(), negative))
    plain = image(fresh(models_dir, "sd15"), prompt, negative)
    assert np.abs(ours - plain).mean() > 1  # the embedding changes the image
    # runs that did not choose it see their words as before: the tokens are private
    assert np.array_equal(image(pipe, prompt, negative), plain)
    assert np.array_equal(image(pipe), base15)

    # a second text encoder that shares this tokenizer gets its rows filled, not a second token
    other = fresh(models_dir, "sd15")
    other.tokenizer = pipe.tokenizer
    em.ensure_loaded(other, hit, "tiny-sd15")
    assert len(pipe.tokenizer) == len(ref.tokenizer) and em.loads == 2
    assert np.array_equal(image(other, rewrite(prompt, hit), rewrite(negative, hit)), ours)


def test_sdxl_embedding_equals_diffusers_and_misfits_are_refused(models_dir, catalog):
    from safetensors.torch import load_file

    em = EmbeddingManager()
    pipe = fresh(models_dir, "sdxl")
    prompt = "a photo of XLEmb"
    hit = find_triggered(prompt, None, embeddings(catalog))
    em.ensure_loaded(pipe, hit, "tiny-sdxl")
    ours = image(pipe, rewrite(prompt, hit))
    assert np.array_equal(image(pipe, "a photo of xlemb"), image(fresh(models_dir, "sdxl"), "a photo of xlemb"))

    ref = fresh(models_dir, "sdxl")
    state = load_file(str(catalog.find("xlemb").path))
    ref.load_textual_inversion(state["clip_l"], token="xlemb", text_encoder=ref.text_encoder, tokenizer=ref.tokenizer)
    ref.load_textual_inversion(state["clip_g"], token="xlemb", text_encoder=ref.text_encoder_2, tokenizer=ref.tokenizer_2)
    assert np.array_equal(ours, image(ref, "a photo of xlemb"))
    assert np.abs(ours - image(fresh(models_dir, "sdxl"), "a photo of xlemb")).mean() > 1

    with pytest.raises(ValidationFailed, match="SDXL needs clip_l"):  # past the catalog: the exact check
        em.ensure_loaded(pipe, [catalog.find("tinyemb")], "tiny-sdxl")
    with pytest.raises(ValidationFailed, match="one text encoder"):
        em.ensure_loaded(fresh(models_dir, "sd15"), [catalog.find("xlemb")], "tiny-sd15")
