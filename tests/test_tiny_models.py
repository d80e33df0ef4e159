"""Tiny real-architecture pipelines: they build offline, load, generate, and are byte-stable."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
import torch

from sdworker.tiny import ARCHES, make_tiny_model, tokenizer as tiny_tok


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub offline mode plus a hard guard: any socket connect fails the test."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model per arch, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, root / arch) for arch in ARCHES}


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("arch", ARCHES)
def test_loads_and_generates_64px(arch: str, built: dict[str, Path], offline: None) -> None:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(built[arch])
    pipe.set_progress_bar_config(disable=True)
    expected = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}[arch]
    assert type(pipe).__name__ == expected
    assert pipe.vae_scale_factor == 2
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64

    out = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(0),
    )
    assert out.images[0].size == (64, 64)
    # The default size comes out of the configs too.
    out = pipe("a cat", num_inference_steps=1, generator=torch.Generator("cpu").manual_seed(0))
    assert out.images[0].size == (64, 64)


@pytest.mark.parametrize("arch", ARCHES)
def test_build_is_byte_deterministic(arch: str, tmp_path: Path) -> None:
    first = _hashes(make_tiny_model(arch, tmp_path / "a"))
    second = _hashes(make_tiny_model(arch, tmp_path / "b"))
    assert "model_index.json" in first
    assert first == second


def test_component_layout(built: dict[str, Path]) -> None:
    xl = built["sdxl"]
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert any((xl / sub).glob("*.safetensors")), sub
    assert not any(xl.rglob("*.bin"))
    assert not (built["sd15"] / "text_encoder_2").exists()
    index = json.loads((built["sd15"] / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert index["safety_checker"] == [None, None]
    sched = json.loads((xl / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "EulerDiscreteScheduler"
    assert sched["timestep_spacing"] == "leading" and sched["steps_offset"] == 1


@pytest.mark.parametrize(
    ("arch", "sub", "pad"),
    [
        ("sd15", "tokenizer", "<|endoftext|>"),
        ("sdxl", "tokenizer", "<|endoftext|>"),
        ("sdxl", "tokenizer_2", "!"),  # like the real SDXL tokenizer_2
    ],
)
def test_saved_tokenizers_load(
    arch: str, sub: str, pad: str, built: dict[str, Path], offline: None
) -> None:
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    folder = built[arch] / sub
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    encoder = built[arch] / sub.replace("tokenizer", "text_encoder")
    encoder_cfg = json.loads((encoder / "config.json").read_text())
    for cls in (CLIPTokenizer, CLIPTokenizerFast):
        t = cls.from_pretrained(folder)
        assert t.model_max_length == 77
        assert t.pad_token == pad
        assert t.pad_token_id == encoder_cfg["pad_token_id"]
        assert t.bos_token_id == encoder_cfg["bos_token_id"]
        assert t.eos_token_id == encoder_cfg["eos_token_id"]
        assert len(t) == encoder_cfg["vocab_size"]


def test_tokenizer_is_compact_and_round_trips(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    t = CLIPTokenizer.from_pretrained(tiny_tok.write_tokenizer_files(tmp_path / "tok"))
    prompt = "a photo of a cat"
    ids = t(prompt).input_ids
    assert ids[0] == t.bos_token_id and ids[-1] == t.eos_token_id
    assert len(ids) < 20
    assert len(ids) - 2 < len(prompt.replace(" ", ""))  # merges actually merge
    assert t.decode(ids, skip_special_tokens=True) == prompt

    text = "a beautiful landscape painting of mountains at sunset, highly detailed"
    assert t.decode(t(text).input_ids, skip_special_tokens=True).split() == (
        "a beautiful landscape painting of mountains at sunset , highly detailed".split()
    )
    # Unseen words still encode (byte fallback) and round-trip.
    assert t.decode(t("zyzzyva").input_ids, skip_special_tokens=True) == "zyzzyva"

    padded = t(prompt, padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == t.pad_token_id == t.eos_token_id


def test_vocab_layout_matches_clip() -> None:
    vocab = tiny_tok.build_vocab()
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|endoftext|>"] == len(vocab) - 1
    assert vocab["<|startoftext|>"] == len(vocab) - 2
    assert sorted(vocab.values()) == list(range(len(vocab)))


def test_refuses_foreign_folder_and_overwrites_model(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a diffusers model"):
        make_tiny_model("sd15", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

    target = make_tiny_model("sdxl", tmp_path / "model")
    assert (target / "text_encoder_2").is_dir()
    assert make_tiny_model("sd15", target) == target
    assert not (target / "text_encoder_2").exists()  # replaced whole, nothing stale
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rejects_unknown_arch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        make_tiny_model("sd9", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown arch"):
        make_tiny_model("sd9", tmp_path / "x", single_file=True)
    assert not (tmp_path / "x").exists()
