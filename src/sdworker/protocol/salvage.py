"""The id of a line that cannot be decoded, so its error still reaches the request that sent it.

A host matches answers to requests by id; an error answered with `request_id: null` is an answer
nobody waits for, and a request nobody answers. Strict JSON (orjson, RFC 8259) refuses lines that
are still readable: `NaN` or `1e309` as a value, a lone surrogate escape (`"\\ud800"`), a byte
that is not UTF-8 inside a string. Python's json module reads those, so the line's ids are taken
from what it reads; the error stays the parse error. A line no parser reads (cut short, garbled)
is no request: no id is guessed from it (JSON-RPC asks for null there). A line over the size limit
is one, too long: its id is looked for in its first bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Lines longer than this are not parsed again for their id (the reader thread's time is the host's).
LENIENT_PARSE_MAX = 1 << 20
HEAD = 4096  # bytes of an oversize line searched for its id

_NATIVE = (re.compile(rb'"request_?[iI]d"\s*:\s*("(?:[^"\\]|\\.){1,200}"|-?\d{1,18}\b)'),)
_LEGACY = _NATIVE + (re.compile(rb'"session_?[iI]d"\s*:\s*("(?:[^"\\]|\\.){1,200}"|-?\d{1,18}\b)'),)
_JSONRPC = (re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.){1,200}"|-?\d{1,18}\b)'),)


def lenient_parse(raw: bytes) -> Any:
    """The line as Python's json reads it (NaN, infinities, lone surrogates; bad UTF-8 replaced), or None."""
    if len(raw) > LENIENT_PARSE_MAX:
        return None
    try:
        return json.loads(raw.decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001  (not JSON even so; recursion, digit limits: no id to be had)
        return None


def id_in_head(head: bytes, form: str) -> Any:
    """The request's id found in the first bytes of an oversize line: a str, an int, or None."""
    patterns = _JSONRPC if form == "jsonrpc" else _LEGACY if form == "legacy" else _NATIVE
    for pat in patterns:
        m = pat.search(head[:HEAD])
        if m is None:
            continue
        token = m.group(1)
        if token.startswith(b'"'):
            try:
                value = json.loads(token.decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(value, str) and value:
                return wire_safe(value)
            continue
        return int(token)
    return None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json joins an escaped pair, so any left is lone


def wire_safe(value: Any) -> Any:
    """An id as it can be written back: one U+FFFD for each lone surrogate (as a JS or .NET UTF-8 encoder
    writes it), not one for each of the three bytes of its invalid UTF-8 form."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    return value
