"""A tiny CLIP byte-level BPE tokenizer, built fully offline.

Real CLIP tokenizers are 49408 tokens and live on the Hub; tests and demos must not
download anything, so we write our own ``vocab.json`` + ``merges.txt`` in exactly
CLIP's format. The vocab is laid out like OpenAI's: the 256 byte-unicode symbols,
the same symbols with the ``</w>`` end-of-word suffix, one token per merge, then
``<|startoftext|>`` and ``<|endoftext|>``. The merges are learned by a small,
deterministic BPE pass over an embedded list of common prompt words, so ordinary
English prompts encode to far fewer tokens than characters.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

# CLIP's byte table and special tokens: one definition, shared with the real CLIP tokenizers.
from ..managers.clip_tokenizers import BOS_TOKEN, END_OF_WORD, EOS_TOKEN, MODEL_MAX_LENGTH, bytes_to_unicode

NUM_MERGES = 256

#: SD 1.5 (and SDXL's first tokenizer) pad with the end-of-text token.
PAD_EOS = EOS_TOKEN
#: The real SDXL ``tokenizer_2`` (OpenCLIP bigG) pads with "!", which is id 0 in CLIP's
#: layout. We copy that: "!" is a plain byte symbol here too, so it costs nothing.
PAD_BANG = "!"

# Words that show up in typical image prompts. Repetition is the frequency signal
# for the merge learner; keep it ASCII lowercase letters only (CLIP's pre-tokenizer
# splits letter runs, numbers and punctuation apart anyway).
_CORPUS = """
a a a a a a a a photo photo photo of of of of of the the the the the the and and and
cat cat cat dog dog dog on on in in in with with with at at to to is is an an
portrait portrait painting painting picture image of a beautiful beautiful landscape
mountain mountains river lake sea ocean sky sky clouds sunset sunrise night city street
house castle forest tree trees flower flowers garden field grass snow rain light light
woman woman man man girl boy child person people face eyes hair smile red red blue blue
green green yellow orange purple black black white white golden gold silver bright dark
high quality quality detailed detailed highly realistic realistic photorealistic style
art art artwork digital digital oil canvas watercolor drawing sketch render rendering
cinematic lighting lighting sharp focus soft shallow depth field background background
close up wide angle shot camera lens film studio trending by an artist masterpiece
best best small small large big little old young cute happy sitting standing running
walking flying wearing holding looking table chair window room inside outside under
over near next front behind space stars moon sun planet robot car ship boat bird horse
fish water fire stone wood glass metal street road bridge tower building buildings
""".split()


def _learn_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair.

    Ties break on the pair itself (lexicographically smallest wins), so the result is
    fully deterministic.
    """
    freqs = Counter(words)
    splits: dict[tuple[str, ...], int] = {}
    for word, count in sorted(freqs.items()):
        symbols = tuple(word[:-1]) + (word[-1] + END_OF_WORD,)
        splits[symbols] = splits.get(symbols, 0) + count

    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in splits.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        new_splits: dict[tuple[str, ...], int] = {}
        for symbols, count in splits.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            key = tuple(out)
            new_splits[key] = new_splits.get(key, 0) + count
        splits = new_splits
    return merges


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols]
    merges = _learn_merges(_CORPUS, NUM_MERGES)
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:  # two merge paths can yield the same token
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return tuple((t, i) for i, t in enumerate(tokens)), tuple(merges)


def build_vocab() -> dict[str, int]:
    """Token -> id, in CLIP's layout (bytes, bytes+</w>, merges, bos, eos)."""
    return dict(_vocab_and_merges()[0])


def build_merges() -> list[tuple[str, str]]:
    """BPE merges in priority order."""
    return list(_vocab_and_merges()[1])


def vocab_size() -> int:
    """Size of the tiny vocab; text encoders' embedding tables must match it."""
    return len(_vocab_and_merges()[0])


def token_id(token: str) -> int:
    """Id of ``token`` in the tiny vocab (KeyError if absent)."""
    return build_vocab()[token]


def write_tokenizer_files(folder: str | Path, pad_token: str = PAD_EOS) -> Path:
    """Write vocab.json, merges.txt and a tokenizer_config.json into ``folder``.

    That is the minimal set both the slow and fast CLIP tokenizers load from
    (transformers 4 and 5). JSON is written with sorted keys for byte-stable output.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, sort_keys=True), encoding="utf-8"
    )
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in build_merges()]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,  # True only warns for BPE in transformers 5
        "add_prefix_space": False,
    }
    (folder / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return folder


def load_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """Load a tokenizer folder written by :func:`write_tokenizer_files` (local only)."""
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
