"""The CLIP tokenizers of single-file SD 1.5 / SDXL checkpoints, offline and always found.

A single-file checkpoint holds weights only; its tokenizers are not in it. SD 1.5's CLIP-L
and both SDXL encoders (CLIP-L and OpenCLIP bigG) share one vocabulary: OpenAI CLIP's
byte-level BPE, which is MIT-licensed and ships with sdworker
(``sdworker/data/clip/bpe_simple_vocab_16e6.txt.gz``, provenance and licence in the
``LICENSE`` beside it). From its merge list we derive ``vocab.json`` exactly as CLIP's own
tokenizer does: the 256 byte symbols, the same with ``</w>``, one token per merge, then
``<|startoftext|>`` and ``<|endoftext|>`` - 49408 tokens with the real ids.

Lookup order for a config set without its own tokenizer folder (the real ``sd15`` / ``sdxl``
sets): ``<checkpoint dir>/<name>``, ``<tokenizers_dir>/<name>``, the local Hugging Face cache,
then the packaged vocabulary. The first three are overrides for whoever wants other files;
a candidate whose vocabulary size is not the text encoder's is skipped. Nothing is ever
downloaded. The tiny config sets carry their own tiny tokenizer folder and use only that.
"""

from __future__ import annotations

import gzip
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ModelLoadFailed

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77
CLIP_VOCAB_SIZE = 49408
#: CLIP uses the first 49152 - 256 - 2 merges of the file (its vocab is 49152 + 256 tokens).
NUM_MERGES = 49152 - 256 - 2
VOCAB_FILE = Path(__file__).resolve().parent.parent / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"

#: Where the real tokenizers live on the Hub: looked up in the local HF cache only.
_HUB_TOKENIZERS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("sd15", "tokenizer"): (
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
        ("runwayml/stable-diffusion-v1-5", "tokenizer"),
        ("openai/clip-vit-large-patch14", ""),
    ),
    ("sdxl", "tokenizer"): (
        ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
        ("openai/clip-vit-large-patch14", ""),
    ),
    ("sdxl", "tokenizer_2"): (
        ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
        ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", ""),
    ),
}
#: SDXL's OpenCLIP tokenizer pads with "!" (id 0); the laion repo's config says otherwise.
_PADS = {("sdxl", "tokenizer_2"): "!"}
_VOCAB_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))


# --------------------------------------------------------------------------- the packaged vocabulary


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode table, in CLIP's vocab order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


@lru_cache(maxsize=1)
def clip_merges() -> tuple[tuple[str, str], ...]:
    """The merges CLIP uses, in priority order (line 0 of the file is a header)."""
    try:
        lines = gzip.decompress(VOCAB_FILE.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ModelLoadFailed(f"the packaged CLIP vocabulary {VOCAB_FILE} is unreadable ({exc}); reinstall sdworker") from exc
    pairs = [tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES]]
    if len(pairs) != NUM_MERGES or any(len(p) != 2 for p in pairs):
        raise ModelLoadFailed(f"the packaged CLIP vocabulary {VOCAB_FILE} is damaged; reinstall sdworker")
    return tuple((a, b) for a, b in pairs)


@lru_cache(maxsize=1)
def _vocab_items() -> tuple[str, ...]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + [a + b for a, b in clip_merges()]
    return (*tokens, BOS_TOKEN, EOS_TOKEN)


def clip_vocab() -> dict[str, int]:
    """Token -> id of CLIP's 49408-token vocabulary (a fresh dict: callers may change theirs)."""
    return {token: i for i, token in enumerate(_vocab_items())}


def packaged_tokenizer(pad_token: str = EOS_TOKEN) -> Any:
    """A CLIP tokenizer from the packaged vocabulary; SDXL's tokenizer_2 pads with "!"."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=clip_vocab(),
        merges=list(clip_merges()),
        pad_token=pad_token,
        model_max_length=MODEL_MAX_LENGTH,
        name_or_path=str(VOCAB_FILE),
    )


# --------------------------------------------------------------------------- overrides on disk


def _has_vocab(folder: Path) -> bool:
    return any(all((folder / f).is_file() for f in group) for group in _VOCAB_FILES)


def _hub_cache_folder(repo: str, sub: str) -> Path | None:
    """The cached snapshot folder holding ``repo``'s tokenizer, or None; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    for group in _VOCAB_FILES:
        hits = [try_to_load_from_cache(repo, f"{sub}/{f}" if sub else f) for f in group]
        found = [h for h in hits if isinstance(h, str)]
        if len(found) == len(hits):
            return Path(found[0]).parent
    return None


def _try_folder(folder: Path, notes: list[str], expected_vocab: int, extra: dict[str, Any]) -> Any:
    from transformers import CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, **extra)
    except Exception as exc:  # corrupt files: try the next place
        notes.append(f"{folder}: {type(exc).__name__}: {exc}")
        return None
    if len(tokenizer) != expected_vocab:
        notes.append(f"{folder}: vocab of {len(tokenizer)} tokens, the text encoder has {expected_vocab}")
        return None
    return tokenizer


def find_tokenizer(
    family: str,
    name: str,
    expected_vocab: int,
    own_folder: Path | None,
    checkpoint: Path,
    tokenizers_dir: str | Path | None = None,
) -> Any:
    """The tokenizer ``name`` ("tokenizer" / "tokenizer_2") of a ``family`` ("sd15" / "sdxl") checkpoint.

    ``own_folder``: the config set's own tokenizer folder (the tiny sets), used alone when given.
    Otherwise the overrides in the module doc's order, then the packaged CLIP vocabulary.
    """
    pad = _PADS.get((family, name), EOS_TOKEN)
    extra: dict[str, Any] = {"model_max_length": MODEL_MAX_LENGTH}
    if (family, name) in _PADS:
        extra["pad_token"] = pad
    folders = [own_folder] if own_folder is not None else [checkpoint.parent / name]
    if own_folder is None and tokenizers_dir:
        folders.append(Path(tokenizers_dir) / name)
    notes: list[str] = []
    for folder in folders:
        if not _has_vocab(folder):
            notes.append(f"{folder}: no vocab.json + merges.txt (or tokenizer.json)")
        elif (tokenizer := _try_folder(folder, notes, expected_vocab, extra)) is not None:
            return tokenizer
    if own_folder is None:
        for repo, sub in _HUB_TOKENIZERS.get((family, name), ()):
            cached = _hub_cache_folder(repo, sub)
            if cached is not None and (tokenizer := _try_folder(cached, notes, expected_vocab, extra)) is not None:
                return tokenizer
        if expected_vocab == CLIP_VOCAB_SIZE:
            return packaged_tokenizer(pad)
        notes.append(f"packaged CLIP vocabulary: {CLIP_VOCAB_SIZE} tokens, the text encoder has {expected_vocab}")
    raise ModelLoadFailed(
        f"no usable {name} for this {family} checkpoint (tokenizers are never downloaded). "
        f"Tried: {'; '.join(notes)}",
        details=[{"path": str(f), "message": f"expected a {name} folder"} for f in folders],
    )
