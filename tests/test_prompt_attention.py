"""A1111 prompt attention syntax and 75-token chunking (sdworker.prompts)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sdworker.prompts import (
    BREAK,
    Chunk,
    chunk_tokens,
    is_break,
    pad_chunk,
    parse_prompt_attention,
    plain_text,
    tokenize_weighted,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parsed(text: str) -> list[list]:
    return [[t, w] for t, w in parse_prompt_attention(text)]


# ---- A1111's own docstring examples, verbatim ----------------------------------------------------
# modules/prompt_parser.py::parse_prompt_attention (AUTOMATIC1111/stable-diffusion-webui).
# The inputs are the docstring's Python literals; '\(literal\]' there is a plain (not raw)
# string whose invalid escapes keep the backslash, hence the raw literal here.

A1111_DOCSTRING = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    (r"\(literal\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ["a ", 1.0],
            ["house", 1.5730000000000004],
            [" ", 1.1],
            ["on", 1.0],
            [" a ", 1.1],
            ["hill", 0.55],
            [", sun, ", 1.1],
            ["sky", 1.4641000000000006],
            [".", 1.1],
        ],
    ),
]


@pytest.mark.parametrize("text,expected", A1111_DOCSTRING)
def test_a1111_docstring_examples(text: str, expected: list[list]) -> None:
    # Exact float equality: the multiplications happen in A1111's order.
    assert parsed(text) == expected


# ---- more cases, worked out by hand from A1111's algorithm ---------------------------------------

R = 1.1
S = 1 / 1.1


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", [["", 1.0]]),
        ("()", [["", 1.0]]),
        ("[]", [["", 1.0]]),
        ("((a))", [["a", R * R]]),
        ("[[a]]", [["a", S * S]]),
        ("[a", [["a", S]]),
        ("a)", [["a)", 1.0]]),  # closer with nothing open: literal
        ("a]", [["a]", 1.0]]),
        ("([a)]", [["a", S * R]]),  # ")" closes "(" though "[" is still open; "]" then closes "["
        ("(a:1.5)", [["a", 1.5]]),
        ("(a:1.5", [["a:1.5", R]]),  # no ")": the ":" and number are text
        ("a:1.5)", [["a:1.5)", 1.0]]),  # weight closer with no "(" open: text
        ("[a:1.5]", [["a:1.5", S]]),  # weights only close round brackets
        ("(a:0)", [["a", 0.0]]),
        ("(a:-0.5)", [["a", -0.5]]),  # A1111 keeps negative weights
        ("(a:+2)", [["a", 2.0]]),
        ("(a:.5)", [["a", 0.5]]),
        ("(a: 1.5)", [["a", 1.5]]),  # whitespace around the weight, as A1111's current parser allows
        ("(red scarf: 1.1)", [["red scarf", 1.1]]),
        ("(red scarf:1.1 )", [["red scarf", 1.1]]),
        ("(x:\t1.2\n) y", [["x", 1.2], [" y", 1.0]]),
        ("(x : 1.2)", [["x ", 1.2]]),  # the space before ":" is part of the text
        ("a: 1.5)", [["a: 1.5)", 1.0]]),  # nothing open: the whole ": 1.5)" is text
        ("(a: 1 .5)", [["a: 1 .5", R]]),  # a space inside the number: not a weight
        ("((a:2)b)", [["a", 2 * R], ["b", R]]),
        ("(a (b:2) c)", [["a ", R], ["b", 2 * R], [" c", R]]),
        ("(a)(b)", [["ab", R]]),
        ("(a)b(c)", [["a", R], ["b", 1.0], ["c", R]]),
        ("((a)", [["a", R * R]]),  # one closed, one left open
        ("([a", [["a", R * S]]),  # unclosed: all "(" first, then all "["
        (r"\\", [["\\", 1.0]]),
        (r"\(a\)", [["(a)", 1.0]]),
        (r"\[a\]", [["[a]", 1.0]]),
        (r"(\))", [[")", R]]),
        (r"a\b", [["ab", 1.0]]),  # a lone backslash is dropped
        ("a\\", [["a", 1.0]]),
        (r"(a\:1.2)", [["a", 1.2]]),  # "\:" is no escape: the "\" is dropped, ":1.2)" still weighs
        ("a:b", [["a:b", 1.0]]),
        ("one, two, three", [["one, two, three", 1.0]]),
    ],
)
def test_attention_cases(text: str, expected: list[list]) -> None:
    assert parsed(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a BREAK b", [["a", 1.0], ["BREAK", -1.0], ["b", 1.0]]),
        ("a\nBREAK\n b", [["a", 1.0], ["BREAK", -1.0], ["b", 1.0]]),  # surrounding whitespace eaten
        ("BREAK", [["", 1.0], ["BREAK", -1.0], ["", 1.0]]),
        ("a BREAK BREAK b", [["a", 1.0], ["BREAK", -1.0], ["", 1.0], ["BREAK", -1.0], ["b", 1.0]]),
        ("aBREAK b", [["aBREAK b", 1.0]]),  # not a whole word
        ("BREAKING news", [["BREAKING news", 1.0]]),
        ("a break b", [["a break b", 1.0]]),  # capitals only
        ("a,BREAK,b", [["a,", 1.0], ["BREAK", -1.0], [",b", 1.0]]),
        ("(a) BREAK (b)", [["a", R], ["", 1.0], ["BREAK", -1.0], ["", 1.0], ["b", R]]),
        # as A1111: brackets multiply the marker too, which makes it the word "BREAK", weighted
        ("(a BREAK b)", [["a", R], ["BREAK", -R], ["b", R]]),
        ("[a BREAK b]", [["a", S], ["BREAK", -S], ["b", S]]),
        ("(BREAK:-1)", [["", -1.0], ["BREAK", 1.0], ["", -1.0]]),
        ("(a BREAK b:0)", [["aBREAKb", 0.0]]),  # -0.0 == 0.0: merged with its neighbours
        ("([BREAK", [["", 1.0], ["BREAK", -1.0], ["", 1.0]]),  # 1.1 * (1/1.1) == 1.0: a break again
        ("(x) BREAK y", [["x", R], ["", 1.0], ["BREAK", -1.0], ["y", 1.0]]),
    ],
)
def test_break(text: str, expected: list[list]) -> None:
    assert parsed(text) == expected


def test_weighted_break_is_a_word_not_a_chunk_break() -> None:
    # A1111's encoder tokenizes a reweighted marker as the text "BREAK": one chunk, no cut
    items = tokenize_weighted(parse_prompt_attention("(cat BREAK dog)"), toy_tokenize)
    assert BREAK not in items
    assert items == [(t, R) for t in toy_tokenize("cat ")] + [(t, -R) for t in toy_tokenize("BREAK")] + [(t, R) for t in toy_tokenize(" dog")]
    assert len(chunk_tokens(items)) == 1
    assert plain_text("(cat BREAK dog)") == "catBREAKdog" and plain_text("cat BREAK dog") == "catdog"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("(x:.)", [["x:.", R]]),  # A1111 raises ValueError here
        ("(x:1.2.3)", [["x:1.2.3", R]]),
        ("(x:-.)y", [["x:-.", R], ["y", 1.0]]),
    ],
)
def test_unparsable_weight_is_text(text: str, expected: list[list]) -> None:
    assert parsed(text) == expected


def test_plain_text() -> None:
    assert plain_text("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == "a house on a hill, sun, sky."
    assert plain_text("a BREAK b") == "ab"
    assert plain_text(r"\(x\)") == "(x)"


def test_is_break() -> None:
    assert is_break(BREAK)
    assert is_break(("BREAK", -1))
    assert not is_break(("BREAK", 1.0))
    assert not is_break((5, -1.0))


# ---- properties ----------------------------------------------------------------------------------

SYNTAX_ATOMS = list("ab c,.()[]\\:0123456789-+") + ["BREAK", " BREAK ", "BREAKx", "\n", "é", "\t"]
syntax_text = st.lists(st.sampled_from(SYNTAX_ATOMS), max_size=40).map("".join)


@FAST
@given(st.one_of(st.text(max_size=60), syntax_text))
def test_never_raises_and_shape(text: str) -> None:
    out = parse_prompt_attention(text)
    assert out, "never empty"
    for piece in out:
        assert isinstance(piece, tuple) and len(piece) == 2
        assert isinstance(piece[0], str) and isinstance(piece[1], float)
    # adjacent pieces never share a weight (runs of equal weights are merged, markers included)
    for a, b in zip(out, out[1:], strict=False):
        assert a[1] != b[1] or (math.isnan(a[1]) and math.isnan(b[1]))


NO_COLON_ATOMS = [a for a in SYNTAX_ATOMS if ":" not in a]


@FAST
@given(st.lists(st.sampled_from(NO_COLON_ATOMS), max_size=50).map("".join))
def test_weights_positive_without_explicit_weights(text: str) -> None:
    # Without ":w)" only 1.1 and 1/1.1 multiply: every weight is positive and finite, but the
    # BREAK marker's (-1, times the brackets around it). (Explicit weights may be 0 or negative.)
    for piece in parse_prompt_attention(text):
        assert math.isfinite(piece[1])
        assert piece[1] > 0 or (piece[0] == "BREAK" and piece[1] < 0)


PLAIN_ATOMS = list("abcxyz ,.!?'0123456789-\n") + ["cat", "BREAKING", "é", "猫"]


@FAST
@given(st.lists(st.sampled_from(PLAIN_ATOMS), max_size=50).map("".join))
def test_plain_input_is_one_piece(text: str) -> None:
    # No brackets, backslashes, colons or BREAK: the text comes back whole with weight 1.
    assert parse_prompt_attention(text) == [(text, 1.0)]


_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*", re.S)


def _marker_piece(piece: tuple[str, float]) -> bool:
    """A BREAK marker, reweighted or not (without explicit weights only it is negative)."""
    return piece[0] == "BREAK" and piece[1] < 0


def strip_syntax(text: str) -> tuple[str, int]:
    """The spec of what the pieces' texts join to, for text WITHOUT ':' (a statement of the rules,
    written independently of the parser): escapes give their character, a lone backslash is
    dropped, bracket characters vanish whether they match or not... except an unmatched closer,
    which is literal text. Text between these is a "run"; whole-word BREAK and the whitespace
    around it is cut from each run. Returns (text, number of BREAKs)."""
    out: list[str] = []
    run: list[str] = []
    breaks = 0
    depth = {"(": 0, "[": 0}

    def flush() -> None:
        nonlocal breaks
        s = "".join(run)
        breaks += len(_BREAK_RE.findall(s))
        out.append(_BREAK_RE.sub("", s))
        run.clear()

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            flush()
            if i + 1 < len(text) and text[i + 1] in "()[]\\":
                out.append(text[i + 1])
                i += 2
            else:
                i += 1
            continue
        if c in "([":
            flush()
            depth[c] += 1
        elif c in ")]":
            opener = "(" if c == ")" else "["
            if depth[opener]:
                flush()
                depth[opener] -= 1
            else:
                # an unmatched closer is text, but it is its own lexeme: it ends the run
                flush()
                run.append(c)
                flush()
        else:
            run.append(c)
        i += 1
    flush()
    return "".join(out), breaks


@FAST
@given(
    st.lists(
        st.sampled_from(["a", "b", " ", ",", "(", ")", "[", "]", "BREAK", " BREAK ", "\n", "x y"]), max_size=50
    ).map("".join)
)
def test_concatenation_without_escapes(text: str) -> None:
    pieces = parse_prompt_attention(text)
    expected_text, expected_breaks = strip_syntax(text)
    assert "".join(t for t, w in pieces if not _marker_piece((t, w))) == expected_text
    assert sum(1 for p in pieces if _marker_piece(p)) == expected_breaks


@FAST
@given(
    st.lists(st.sampled_from(NO_COLON_ATOMS + ["\\(", "\\)", "\\[", "\\]", "\\\\", "\\a"]), max_size=50).map("".join)
)
def test_concatenation_with_escapes(text: str) -> None:
    pieces = parse_prompt_attention(text)
    expected_text, expected_breaks = strip_syntax(text)
    assert "".join(t for t, w in pieces if not _marker_piece((t, w))) == expected_text
    assert sum(1 for p in pieces if _marker_piece(p)) == expected_breaks
    if not any(p[0] == "BREAK" and p[1] < 0 and not is_break(p) for p in pieces):
        assert plain_text(text) == expected_text


@FAST
@given(st.lists(st.sampled_from(["a", " ", ",", "(", "[", "BREAK", " BREAK "]), max_size=40).map("".join))
def test_brackets_only_opening_remove_all_brackets(text: str) -> None:
    # With no closers every bracket is syntax: the text is the input minus brackets and BREAKs.
    runs = re.split(r"[(\[]", text)
    pieces = parse_prompt_attention(text)
    assert "".join(t for t, w in pieces if not _marker_piece((t, w))) == "".join(_BREAK_RE.sub("", r) for r in runs)


# ---- against a plain restatement of A1111's algorithm ---------------------------------------------
# modules/prompt_parser.py: one regex of lexemes (its re_attention, whitespace around the weight
# included), bracket stacks of start indexes, multiply-to-the-end on close, unclosed brackets
# applied at the end (round first), BREAK split out of text lexemes as ["BREAK", -1], then runs
# of equal weights merged. A weight that float() refuses raises ValueError there.

_A1111_LEXEME = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:"
)


def a1111_reference(text: str) -> list[list]:
    out: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def times(start: int, factor: float) -> None:
        for piece in out[start:]:
            piece[1] *= factor

    for m in _A1111_LEXEME.finditer(text):
        lexeme, weight = m.group(0), m.group(1)
        if lexeme.startswith("\\"):
            out.append([lexeme[1:], 1.0])
        elif lexeme == "(":
            rounds.append(len(out))
        elif lexeme == "[":
            squares.append(len(out))
        elif weight is not None and rounds:
            times(rounds.pop(), float(weight))
        elif lexeme == ")" and rounds:
            times(rounds.pop(), 1.1)
        elif lexeme == "]" and squares:
            times(squares.pop(), 1 / 1.1)
        else:
            for k, part in enumerate(_BREAK_RE.split(lexeme)):
                if k:
                    out.append(["BREAK", -1])
                out.append([part, 1.0])
    for start in rounds:
        times(start, 1.1)
    for start in squares:
        times(start, 1 / 1.1)
    if not out:
        out = [["", 1.0]]
    merged = [out[0]]
    for piece in out[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged


def _same(ours: list[tuple[str, float]], theirs: list[list]) -> bool:
    return len(ours) == len(theirs) and all(
        a[0] == b[0] and (a[1] == b[1] or (math.isnan(a[1]) and math.isnan(b[1]))) for a, b in zip(ours, theirs)
    )


def test_reference_is_a1111() -> None:
    for text, expected in A1111_DOCSTRING:
        assert a1111_reference(text) == expected
    with pytest.raises(ValueError):
        a1111_reference("(x:.)")


A1111_ATOMS = SYNTAX_ATOMS + [":1.2)", ": 1.2)", ":1.2 )", ": -0.5 )", ":\t2)", ":0)", ":.)", " : ", "BREAK ", "\\", "( ", " )"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(st.sampled_from(A1111_ATOMS), max_size=40).map("".join), st.text(max_size=60)))
def test_matches_a1111(text: str) -> None:
    try:
        expected = a1111_reference(text)
    except ValueError:  # A1111 fails; the one documented difference (see test_unparsable_weight_is_text)
        parse_prompt_attention(text)
        return
    assert _same(parse_prompt_attention(text), expected), (parse_prompt_attention(text), expected)


# ---- tokenizing and chunking ---------------------------------------------------------------------

COMMA = 1


def toy_tokenize(text: str) -> list[int]:
    """Words -> ids (commas are their own token, id 1): enough to test the plumbing."""
    out = []
    for w in re.findall(r",|[^\s,]+", text):
        out.append(COMMA if w == "," else 100 + sum(map(ord, w)) % 1000)
    return out


def test_tokenize_weighted() -> None:
    items = tokenize_weighted(parse_prompt_attention("a (big:1.5) cat BREAK dog"), toy_tokenize)
    assert [w for _, w in items] == [1.0, 1.5, 1.0, -1.0, 1.0]
    assert is_break(items[3])


def stream(n: int, weight: float = 1.0, start: int = 1000) -> list[tuple[int, float]]:
    return [(start + i, weight) for i in range(n)]


def test_chunk_short_and_empty() -> None:
    assert [c.tokens for c in chunk_tokens([])] == [[]]
    c = chunk_tokens(stream(3, 1.2))
    assert len(c) == 1 and c[0].tokens == [1000, 1001, 1002] and c[0].weights == [1.2] * 3


def test_chunk_exact_and_over() -> None:
    assert [len(c) for c in chunk_tokens(stream(75))] == [75]
    assert [len(c) for c in chunk_tokens(stream(76))] == [75, 1]
    assert [len(c) for c in chunk_tokens(stream(150))] == [75, 75]
    assert [len(c) for c in chunk_tokens(stream(200))] == [75, 75, 50]


def test_chunk_break() -> None:
    assert [len(c) for c in chunk_tokens([*stream(3), BREAK, *stream(4)])] == [3, 4]
    assert [len(c) for c in chunk_tokens([BREAK, *stream(2)])] == [0, 2]  # A1111: leading empty chunk
    assert [len(c) for c in chunk_tokens([*stream(2), BREAK])] == [2]  # no trailing empty chunk
    assert [len(c) for c in chunk_tokens([*stream(2), BREAK, BREAK, *stream(1)])] == [2, 0, 1]
    assert [len(c) for c in chunk_tokens([*stream(75), BREAK, *stream(1)])] == [75, 1]  # no empty one between


def with_comma_at(n: int, comma_index: int) -> list[tuple[int, float]]:
    items = stream(n)
    items[comma_index] = (COMMA, 1.0)
    return items


def test_comma_backtrack() -> None:
    # comma at chunk index 60 (75 - 60 = 15 <= 20): the 14 tokens after it move on
    items = with_comma_at(81, 60)
    got = chunk_tokens(items, comma_token=COMMA)
    assert [len(c) for c in got] == [61, 20]
    assert got[0].tokens[-1] == COMMA
    assert got[0].tokens + got[1].tokens == [t for t, _ in items]
    # off unless a comma token is given, or with comma_backtrack=0
    assert [len(c) for c in chunk_tokens(items)] == [75, 6]
    assert [len(c) for c in chunk_tokens(items, comma_token=COMMA, comma_backtrack=0)] == [75, 6]


def test_comma_backtrack_window_edges() -> None:
    # index 55: 75 - 55 = 20 <= 20 -> backtrack; index 54: 21 > 20 -> no backtrack
    assert [len(c) for c in chunk_tokens(with_comma_at(80, 55), comma_token=COMMA)] == [56, 24]
    assert [len(c) for c in chunk_tokens(with_comma_at(80, 54), comma_token=COMMA)] == [75, 5]
    # a comma as the 75th token: nothing to move
    assert [len(c) for c in chunk_tokens(with_comma_at(80, 74), comma_token=COMMA)] == [75, 5]
    # a comma arriving at a full chunk starts the next one
    got = chunk_tokens(with_comma_at(80, 75), comma_token=COMMA)
    assert [len(c) for c in got] == [75, 5] and got[1].tokens[0] == COMMA
    # a wider window
    assert [len(c) for c in chunk_tokens(with_comma_at(80, 40), comma_token=COMMA, comma_backtrack=40)] == [41, 39]


def test_comma_backtrack_resets_per_chunk() -> None:
    # the comma in chunk 1 must not cause a cut in chunk 2
    items = with_comma_at(160, 10)
    assert [len(c) for c in chunk_tokens(items, comma_token=COMMA)] == [75, 75, 10]


def test_pad_chunk() -> None:
    ids, weights = pad_chunk(Chunk([5, 6], [1.5, 0.5]), bos=49406, eos=49407)
    assert len(ids) == len(weights) == 77
    assert ids[:4] == [49406, 5, 6, 49407] and set(ids[4:]) == {49407}
    assert weights[:4] == [1.0, 1.5, 0.5, 1.0] and set(weights[4:]) == {1.0}
    ids, _ = pad_chunk(Chunk([5], [1.0]), bos=49406, eos=49407, pad=0)
    assert ids[:3] == [49406, 5, 49407] and set(ids[3:]) == {0}
    ids, _ = pad_chunk(Chunk(list(range(75)), [1.0] * 75), bos=1, eos=2)
    assert len(ids) == 77 and ids[-1] == 2
    with pytest.raises(ValueError):
        pad_chunk(Chunk(list(range(76)), [1.0] * 76), bos=1, eos=2)
    with pytest.raises(ValueError):
        chunk_tokens([], chunk_size=0)


token_streams = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 20), st.floats(0.1, 3.0)),  # token 1 is the comma
        st.just(BREAK),
    ),
    max_size=400,
)


def _segments(items: list) -> list[list]:
    segs: list[list] = [[]]
    for it in items:
        if is_break(it):
            segs.append([])
        else:
            segs[-1].append(it)
    return segs


@FAST
@given(token_streams, st.sampled_from([None, COMMA]), st.integers(0, 30), st.sampled_from([75, 7, 1]))
def test_chunking_properties(items: list, comma: int | None, backtrack: int, size: int) -> None:
    chunks = chunk_tokens(items, size, comma_token=comma, comma_backtrack=backtrack)
    assert chunks
    assert all(len(c.tokens) == len(c.weights) <= size for c in chunks)
    flat = [(t, w) for c in chunks for t, w in zip(c.tokens, c.weights, strict=True)]
    assert flat == [(t, w) for t, w in items if not is_break((t, w))]
    segs = _segments(items)
    if comma is None or backtrack == 0:
        # BREAK forces a boundary; otherwise chunks are full until the segment's end
        expected = sum(max(1, math.ceil(len(s) / size)) for s in segs[:-1])
        last = len(segs[-1])
        expected += math.ceil(last / size) if last else (1 if len(segs) == 1 else 0)
        assert len(chunks) == expected
    else:
        assert len(chunks) >= len(segs) - (0 if segs[-1] else 1)


@FAST
@given(
    st.lists(st.sampled_from(["a", "cat", ",", "(", ")", "[", "]", " BREAK ", "(big:1.5)", " "]), max_size=200).map(
        "".join
    )
)
def test_parse_tokenize_chunk_pipeline(text: str) -> None:
    chunks = chunk_tokens(tokenize_weighted(parse_prompt_attention(text), toy_tokenize), comma_token=COMMA)
    for c in chunks:
        ids, weights = pad_chunk(c, bos=2, eos=3)
        assert len(ids) == len(weights) == 77
        # only a BREAK inside brackets (then the word "BREAK", as in A1111) has a negative weight
        assert all(w > 0 or i in toy_tokenize("BREAK") for i, w in zip(ids, weights))


def test_with_the_tiny_clip_tokenizer(tmp_path) -> None:
    """End to end with a real CLIPTokenizer (the offline tiny one): commas are ',</w>'."""
    from sdworker.tiny.tokenizer import load_tokenizer, write_tokenizer_files

    tok = load_tokenizer(write_tokenizer_files(tmp_path / "tok"))
    comma = tok.convert_tokens_to_ids(",</w>")

    def tokenize(text: str) -> list[int]:
        return tok(text, add_special_tokens=False, truncation=False)["input_ids"]

    prompt = ", ".join(["a beautiful landscape with (mountains:1.2) and a [river]"] * 12)
    pieces = parse_prompt_attention(prompt)
    items = tokenize_weighted(pieces, tokenize)
    chunks = chunk_tokens(items, comma_token=comma)
    assert len(chunks) >= 2
    assert all(len(c) <= 75 for c in chunks)
    # every chunk but the last ends at a comma or is full
    for c in chunks[:-1]:
        assert len(c) == 75 or c.tokens[-1] == comma
    assert {round(w, 6) for c in chunks for w in c.weights} == {1.0, 1.2, round(1 / 1.1, 6)}
    for c in chunks:
        ids, weights = pad_chunk(c, tok.bos_token_id, tok.eos_token_id)
        assert len(ids) == 77 and ids[0] == tok.bos_token_id
