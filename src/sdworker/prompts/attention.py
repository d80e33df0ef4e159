r"""A1111 prompt attention syntax: ``(word)``, ``[word]``, ``(word:1.3)``, escapes, ``BREAK``.

Pure Python (no torch, no tokenizer import); the encoder that applies the weights lives elsewhere.

API
===
``parse_prompt_attention(text) -> list[tuple[str, float]]``
    Split a prompt into ``(text, weight)`` pieces with the semantics of A1111's
    ``modules/prompt_parser.py::parse_prompt_attention`` (the one deliberate difference is listed
    below). ``BREAK`` (a whole word, in capitals) becomes the marker :data:`BREAK` ``("BREAK", -1.0)``.
    Never raises on any ``str``.
``is_break(item) -> bool``
    Whether a parsed piece, or an item of a token stream, is the BREAK marker.
``plain_text(text) -> str``
    The prompt with the syntax removed: the pieces' texts joined, BREAK markers dropped. For
    encoders that take no weights.
``tokenize_weighted(pieces, tokenize) -> list[tuple[int, float] | BREAK]``
    Apply a tokenizer to each piece separately (as A1111 does: ``"an (important) word"`` is
    tokenized as ``"an "``, ``"important"``, ``" word"``). ``tokenize(text) -> list[int]`` must
    not add BOS/EOS. BREAK markers pass through.
``chunk_tokens(items, chunk_size=75, *, comma_token=None, comma_backtrack=20) -> list[Chunk]``
    Cut a weighted token stream into chunks of at most ``chunk_size`` tokens (rules below).
``pad_chunk(chunk, bos, eos, pad=None, chunk_size=75) -> (ids, weights)``
    ``[bos] + tokens + [eos] + [pad] * (chunk_size - len(tokens))``: 77 ids for CLIP; weights are
    1.0 on BOS, EOS and padding. ``pad=None`` pads with ``eos`` (SD1's CLIP); SD2/SDXL's second
    encoder pads with its own pad id, which is what A1111 does for them.

Syntax (A1111)
==============
* ``(x)`` multiplies the weight of ``x`` by 1.1; ``[x]`` by 1/1.1; ``(x:w)`` by ``w`` (``w``
  matches ``[+-]?[.0-9]+``, with optional whitespace on both sides: ``(red scarf: 1.1 )``; it
  may be 0 or negative, and stays so: A1111 passes it on). Brackets nest; multipliers compose.
* A bracket never closed applies to everything after it (all unclosed ``(`` first, then all
  unclosed ``[``, outermost first); a closer with nothing open is literal text. ``[x:2]`` is
  ``[``, ``x:2``, ``]`` (the ``:w)`` form only closes a round bracket).
* Escapes: ``\(``, ``\)``, ``\[``, ``\]``, ``\\`` give the character; a backslash before
  anything else is dropped (``a\b`` -> ``ab``), as in A1111.
* ``BREAK`` as a whole word (``\bBREAK\b``) is cut out together with the whitespace around it
  and leaves the marker; a prompt that is nothing but syntax yields ``[("", 1.0)]``.
* The marker is a piece like any other, as in A1111: brackets around it multiply its weight,
  so inside a weighted group (``(a BREAK b)`` -> ``("BREAK", -1.1)``) it is no longer the
  marker but the word "BREAK" with that weight, which is what A1111's encoder then makes of it.
* Adjacent pieces with exactly equal weights (float ``==``) are merged, marker included;
  weights are multiplied in the same order as A1111, so the floats are bit-identical
  (``house`` in A1111's own example is ``1.5730000000000004``).

The one difference from A1111, on input where A1111 fails: a weight that is not a number
(``(x:.)``, ``(x:1.2.3)``) raises ``ValueError`` there. Here the ``:`` is literal text and
the ``)`` closes the bracket with 1.1: ``(x:.)`` -> ``[("x:.", 1.1)]``.

Huge weights are ``float()``'d as A1111 does (``(x:1` + 400 digits + ``)`` is ``inf``); validate
weights downstream if that matters.

Chunking (A1111's ``sd_hijack_clip.tokenize_line``)
===================================================
Tokens are appended to the current chunk in order. A BREAK marker closes the current chunk, even
an empty one (a prompt starting with BREAK has an empty first chunk, as in A1111). A token that
arrives when the chunk already has ``chunk_size`` tokens first closes it. At the end, the last
chunk is closed if it has tokens or if there is no chunk yet (so an empty prompt is one empty
chunk).

Comma backtrack (optional; on when ``comma_token`` is given and ``comma_backtrack > 0``; A1111's
default is 20 with CLIP's ``",</w>"``): the position of the last comma in the current chunk is
remembered (reset on every new chunk). When a token that is not a comma arrives at a full chunk,
and the last comma's index ``c`` in that chunk (0-based) satisfies ``chunk_size - c <=
comma_backtrack``, i.e. the comma is among the last ``comma_backtrack`` tokens, the tokens after
the comma (``chunk_size - c - 1`` of them, at most ``comma_backtrack - 1``) move to a new chunk,
and the arriving token follows them there. The comma itself stays at the end of the old chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "BREAK",
    "Chunk",
    "ROUND_MULTIPLIER",
    "SQUARE_MULTIPLIER",
    "chunk_tokens",
    "is_break",
    "pad_chunk",
    "parse_prompt_attention",
    "plain_text",
    "tokenize_weighted",
]

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

#: The chunk-break marker, as a parsed piece and as an item of a token stream.
BREAK: tuple[str, float] = ("BREAK", -1.0)

_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ESCAPABLE = "()[]\\"
_SPECIAL = "\\()[]:"
#: What follows the ":" of a weight, as in A1111's re_attention: ``:\s*([+-]?[.\d]+)\s*\)``.
_WEIGHT_RE = re.compile(r"\s*([+-]?[.\d]+)\s*\)")


def is_break(item: Sequence[object]) -> bool:
    """True for the BREAK marker: text "BREAK" with weight -1 (A1111's own test)."""
    return len(item) == 2 and item[0] == "BREAK" and item[1] == -1


def _number(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _scan(text: str) -> Iterable[tuple[str, str, float | None]]:
    """Lexemes of the attention grammar: (kind, text, weight).

    kinds: "text" (literal text, BREAK not yet split), "lit" (an escaped char, or "" for a
    dropped lone backslash), "(" , "[", ")", "]", "w)" (a ":number)" closer with its weight).
    """
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 < n and text[i + 1] in _ESCAPABLE:
                yield "lit", text[i + 1], None
                i += 2
            else:
                yield "lit", "", None
                i += 1
        elif c in "()[]":
            yield c, c, None
            i += 1
        elif c == ":":
            m = _WEIGHT_RE.match(text, i + 1)
            weight = _number(m.group(1)) if m is not None else None
            if m is not None and weight is not None:
                yield "w)", text[i : m.end()], weight
                i = m.end()
            else:  # no weight here (or "(x:.)", where A1111 crashes): ':' is text
                yield "text", ":", None
                i += 1
        else:
            j = i + 1
            while j < n and text[j] not in _SPECIAL:
                j += 1
            yield "text", text[i:j], None
            i = j


@dataclass
class _Piece:
    text: str
    weight: float


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """``text`` -> ``[(text, weight), ...]`` with A1111's semantics (see the module doc)."""
    pieces: list[_Piece] = []
    rounds: list[int] = []  # index into pieces where each open "(" starts
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for p in pieces[start:]:
            p.weight *= factor

    for kind, lex, weight in _scan(text):
        if kind == "lit":
            pieces.append(_Piece(lex, 1.0))
        elif kind == "(":
            rounds.append(len(pieces))
        elif kind == "[":
            squares.append(len(pieces))
        elif kind == "w)" and rounds:
            assert weight is not None
            scale(rounds.pop(), weight)
        elif kind == ")" and rounds:
            scale(rounds.pop(), ROUND_MULTIPLIER)
        elif kind == "]" and squares:
            scale(squares.pop(), SQUARE_MULTIPLIER)
        else:  # text, or a closer with nothing to close: literal text
            for k, part in enumerate(_BREAK_RE.split(lex)):
                if k:
                    pieces.append(_Piece(*BREAK))
                pieces.append(_Piece(part, 1.0))

    for start in rounds:
        scale(start, ROUND_MULTIPLIER)
    for start in squares:
        scale(start, SQUARE_MULTIPLIER)

    if not pieces:
        return [("", 1.0)]

    merged: list[_Piece] = [pieces[0]]
    for p in pieces[1:]:
        last = merged[-1]
        if p.weight == last.weight:
            last.text += p.text
        else:
            merged.append(p)
    return [(p.text, p.weight) for p in merged]


def plain_text(text: str) -> str:
    """The prompt without attention syntax: every piece's text joined, BREAK markers dropped."""
    return "".join(t for t, w in parse_prompt_attention(text) if not is_break((t, w)))


# ---- tokens and chunks ---------------------------------------------------------------------------

TokenItem = tuple[int, float] | tuple[str, float]


def tokenize_weighted(pieces: Iterable[tuple[str, float]], tokenize: Callable[[str], Sequence[int]]) -> list[TokenItem]:
    """Parsed pieces -> a flat token stream ``[(token_id, weight) | BREAK, ...]``."""
    out: list[TokenItem] = []
    for text, weight in pieces:
        if is_break((text, weight)):
            out.append(BREAK)
            continue
        out.extend((int(t), weight) for t in tokenize(text))
    return out


@dataclass
class Chunk:
    """At most ``chunk_size`` token ids and their weights, without BOS/EOS/padding."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


def chunk_tokens(
    items: Iterable[TokenItem],
    chunk_size: int = 75,
    *,
    comma_token: int | None = None,
    comma_backtrack: int = 20,
) -> list[Chunk]:
    """Cut a weighted token stream into chunks (rules in the module doc). Never empty."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    backtrack = comma_backtrack if comma_token is not None else 0
    chunks: list[Chunk] = []
    cur = Chunk()
    last_comma = -1

    def close() -> None:
        nonlocal cur, last_comma
        chunks.append(cur)
        cur = Chunk()
        last_comma = -1

    for item in items:
        if is_break(item):
            close()
            continue
        token, weight = int(item[0]), float(item[1])
        if comma_token is not None and token == comma_token:
            last_comma = len(cur)
        elif backtrack > 0 and len(cur) == chunk_size and last_comma != -1 and chunk_size - last_comma <= backtrack:
            cut = last_comma + 1
            moved = Chunk(cur.tokens[cut:], cur.weights[cut:])
            del cur.tokens[cut:], cur.weights[cut:]
            close()
            cur = moved
        if len(cur) == chunk_size:
            close()
        cur.tokens.append(token)
        cur.weights.append(weight)

    if cur.tokens or not chunks:
        close()
    return chunks


def pad_chunk(
    chunk: Chunk, bos: int, eos: int, pad: int | None = None, chunk_size: int = 75
) -> tuple[list[int], list[float]]:
    """``chunk`` wrapped in BOS/EOS and padded to ``chunk_size + 2`` ids, with matching weights."""
    if len(chunk.tokens) > chunk_size:
        raise ValueError(f"chunk has {len(chunk.tokens)} tokens, more than {chunk_size}")
    fill = chunk_size - len(chunk.tokens)
    ids = [bos, *chunk.tokens, eos] + [eos if pad is None else pad] * fill
    weights = [1.0, *chunk.weights, 1.0] + [1.0] * fill
    return ids, weights
