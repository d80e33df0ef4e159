"""The packaged CLIP tokenizer: real ids, SD 1.5 / SDXL padding, and single files that need it.

Known id sequences are the real CLIP tokenizer's, as published in other projects' tests; a
plain-Python CLIP BPE written from CLIP's algorithm checks the HF tokenizer we build on any
text; a worker with an empty Hugging Face home loads tiny single files over CLIP's vocabulary.
"""

from __future__ import annotations

import gzip
import hashlib
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import Worker
from sdworker.managers import clip_tokenizers as ct

ROOT = Path(__file__).resolve().parents[1]

#: (prompt, ids) from the real CLIP tokenizer (openai/clip-vit-large-patch14, open_clip).
KNOWN = [
    ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
    ("the black dog", [49406, 518, 1449, 1929, 49407]),
    ("a photo of an astronaut riding a horse on mars", [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]),
    (
        "Apple CoreML developer tools on a Macbook Air are fast",
        [49406, 3055, 19622, 5780, 10929, 5771, 525, 320, 20617, 1922, 631, 1953, 49407],
    ),
    ("Hello, World! 123", [49406, 3306, 267, 1002, 256, 272, 273, 274, 49407]),
]


@lru_cache(maxsize=2)
def tokenizer(pad: str = ct.EOS_TOKEN):
    return ct.packaged_tokenizer(pad)


@pytest.mark.parametrize("pad", [ct.EOS_TOKEN, "!"])
@pytest.mark.parametrize("prompt,ids", KNOWN)
def test_known_ids(prompt: str, ids: list[int], pad: str) -> None:
    if pad == "!":
        # With "!" as its pad token, transformers matches "!" in the text as that special token
        # (id 0) instead of the word "!</w>" (256): what SDXL's own tokenizer_2 folder does too.
        ids = [0 if i == 256 else i for i in ids]
    assert tokenizer(pad)(prompt).input_ids == ids


def test_padding_and_truncation_as_sd_and_sdxl() -> None:
    sd, bang = tokenizer(), tokenizer("!")
    assert len(sd) == len(bang) == ct.CLIP_VOCAB_SIZE == 49408
    assert (sd.bos_token_id, sd.eos_token_id, sd.pad_token_id, bang.pad_token_id) == (49406, 49407, 49407, 0)
    cat = KNOWN[0][1]

    def padded(tok, text):
        return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids

    assert sd.model_max_length == bang.model_max_length == 77
    assert padded(sd, "a photo of a cat") == cat + [49407] * 70  # SD 1.5 / SDXL tokenizer
    assert padded(bang, "a photo of a cat") == cat + [0] * 70  # SDXL tokenizer_2 pads with "!"
    long = padded(sd, "cat " * 100)
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407 and long[1:-1] == [2368] * 75


def test_packaged_file_and_licence() -> None:
    data = ct.VOCAB_FILE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    notice = (ct.VOCAB_FILE.parent / "LICENSE").read_text(encoding="utf-8")
    for words in ("MIT License", "Copyright (c) 2021 OpenAI", "open_clip_torch 3.3.0", "Permission is hereby granted"):
        assert words in notice
    assert '"data/**/*"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # shipped as package data


def test_a_damaged_vocabulary_is_a_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdworker.errors import ModelLoadFailed

    for junk in (b"not gzip", gzip.compress(b"#version: 0.2\ni n\n")):
        bad = tmp_path / "bpe.txt.gz"
        bad.write_bytes(junk)
        monkeypatch.setattr(ct, "VOCAB_FILE", bad)
        ct.clip_merges.cache_clear()
        try:
            with pytest.raises(ModelLoadFailed, match="reinstall sdworker"):
                ct.clip_merges()
        finally:
            ct.clip_merges.cache_clear()


# --------------------------------------------------------------------------- a reference CLIP BPE


@lru_cache(maxsize=1)
def reference() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """CLIP's vocabulary rebuilt here from the file, the way CLIP's SimpleTokenizer builds it."""
    lines = gzip.decompress(ct.VOCAB_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + n)
            n += 1
    byte_chars = {b: chr(c) for b, c in zip(keep, codes)}
    tokens = list(byte_chars.values())
    tokens += [t + "</w>" for t in tokens] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, {m: i for i, m in enumerate(merges)}


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> list[str]:
    while len(word) > 1:
        pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = tuple(merged)
    return list(word)


def reference_ids(text: str) -> list[int]:
    regex = pytest.importorskip("regex")
    vocab, ranks = reference()
    byte_chars = ct.bytes_to_unicode()
    # the HF tokenizer's normalizer: NFC, whitespace runs to one space, lower case
    text = regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()
    words = regex.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", text, regex.IGNORECASE)
    ids = [vocab["<|startoftext|>"]]
    for word in words:
        chars = "".join(byte_chars[b] for b in word.encode("utf-8"))
        ids += [vocab[t] for t in _bpe((*chars[:-1], chars[-1] + "</w>"), ranks)]
    return ids + [vocab["<|endoftext|>"]]


def test_reference_vocabulary_is_the_packaged_one() -> None:
    vocab, _ = reference()
    assert vocab == ct.clip_vocab()
    assert list(ct.bytes_to_unicode())[:3] == [33, 34, 35] and ct.bytes_to_unicode()[0] == "Ā"


@pytest.mark.parametrize("prompt,ids", KNOWN)
def test_reference_gives_the_known_ids(prompt: str, ids: list[int]) -> None:
    assert reference_ids(prompt) == ids


WORDS = ["a", "photo", "of", "cat", "masterpiece", "best quality", "ultra-detailed", "8k", "1girl", "DSLR",
         "bokeh", "café", "naïve", "über", "東京", "猫", "🙂", "—", "(", ")", ":", "1.2", ",", ".", "'s", "don't",
         "Schrödinger", "ÆØÅ", "x" * 30, "  ", "\n", "\t", "supercalifragilistic", "NSFW", "[", "]", "_", "#"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(WORDS), st.text(alphabet=st.characters(codec="latin-1", exclude_characters="<|"), max_size=8)), max_size=25).map(" ".join))
def test_packaged_tokenizer_equals_clip_bpe(text: str) -> None:
    assert tokenizer()(text).input_ids == reference_ids(text)


# --------------------------------------------------------------------------- through the worker


@pytest.fixture(scope="module")
def clip_worker(tmp_path_factory: pytest.TempPathFactory):
    """Tiny single files over CLIP's vocabulary; an empty HF home; no tokenizer files anywhere."""
    from sdworker.tiny.single_file import CLIP_VOCAB_ARCHES, make_tiny_single_file

    root = tmp_path_factory.mktemp("clip-models")
    for arch in CLIP_VOCAB_ARCHES:
        make_tiny_single_file(arch, root / f"tiny-{arch}")
    hf_home = tmp_path_factory.mktemp("empty-hf-home")
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_CACHE": str(hf_home / "hub")}
    w = Worker(["--models-dir", str(root), "--output-dir", str(tmp_path_factory.mktemp("out"))], env=env)
    yield w, root, hf_home
    w.kill()


@pytest.mark.parametrize(
    "arch,base,encoders", [("sd15-clip", "sd_1_5", ["tokenizer"]), ("sdxl-clip", "sdxl", ["tokenizer", "tokenizer_2"])]
)
def test_single_file_needs_no_tokenizer_files(clip_worker, arch: str, base: str, encoders: list[str]) -> None:
    w, root, hf_home = clip_worker
    assert not list(root.rglob("*.json")) and not list(root.rglob("merges.txt"))
    model = f"tiny-{arch}"
    listed = {i["model_id"]: i for i in w.call("model.list_models", {"kind": "checkpoint"})["data"]["items"]}
    assert (listed[model]["format"], listed[model]["base_model"]) == ("safetensors", base)
    res = w.call("inference.text2img", {"model_id": model, "prompt": "a photo of an astronaut riding a horse", "steps": 1, "width": 64, "height": 64, "seed": 3}, timeout=300)
    assert res["success"], res
    assert len(res["data"]["images"]) == 1
    # the prompt was tokenized with CLIP's vocabulary: 8 words -> 8 tokens per encoder (the tiny
    # tokenizer would need several for "astronaut" and "riding")
    parsed = w.call("inference.parse_prompt", {"prompt": "a photo of an astronaut riding a horse", "model_id": model})["data"]
    assert parsed["model_loaded"] and parsed["token_counts"] == {e: 8 for e in encoders}
    assert not any(hf_home.rglob("*.json")), "nothing may be downloaded or cached"
