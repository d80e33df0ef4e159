"""Keys sent twice in one JSON object (`{"steps": 2, "steps": 3}`): refused, never decided silently.

JSON parsers keep one of the two values (orjson the last) and say nothing, so the host's intent is
lost. Finding them without slowing every line: every string of the line, keys included, shows in
its bytes as two quote characters plus one for each quote inside it (escaped as `\\"` or
`\\u0022`). The parsed document accounts for exactly that many unless a key (and its value) was
dropped, so only a line whose count is off is parsed once more, keeping every pair, to name the
repeated key and where it is.
"""

from __future__ import annotations

import json
from typing import Any

Found = tuple[str, str]  # (path of the repeated key, the key)


def _quotes_in(doc: Any) -> int:
    """Quote characters the line of `doc` holds if every key was kept (walked without recursion)."""
    total = 0
    stack = [doc]
    while stack:
        node = stack.pop()
        if type(node) is str:
            total += 2 + node.count('"')
        elif type(node) is dict:
            for k, v in node.items():
                total += 2 + k.count('"')
                stack.append(v)
        elif type(node) is list:
            stack.extend(node)
    return total


class _Pairs(dict[str, Any]):
    """A parsed object that remembers its repeated keys."""

    __slots__ = ("repeated",)
    repeated: list[str]


def _keep_pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    out = _Pairs()
    out.repeated = []
    for k, v in pairs:
        if k in out and k not in out.repeated:
            out.repeated.append(k)
        out[k] = v
    return out


def _first_repeated(doc: Any, path: str) -> Found | None:
    stack: list[tuple[Any, str]] = [(doc, path)]
    while stack:
        node, where = stack.pop(0)
        if isinstance(node, _Pairs):
            if node.repeated:
                key = node.repeated[0]
                return (f"{where}.{key}" if where else key), key
            stack.extend((v, f"{where}.{k}" if where else k) for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node) if isinstance(v, (dict, list)))
    return None


def repeated_keys(line: bytes, doc: Any) -> dict[int | None, Found]:
    """Where `line` (parsed as `doc`) repeats a key: {batch index, or None for a single object: (path, key)}."""
    if _quotes_in(doc) == line.count(b'"') + line.count(b"\\u0022"):
        return {}  # nothing was dropped (nearly every line)
    try:
        full = json.loads(line.decode("utf-8"), object_pairs_hook=_keep_pairs)
    except Exception:  # noqa: BLE001  (orjson read it; if json cannot, there is nothing more to learn)
        return {}
    if isinstance(full, list):
        found = {i: _first_repeated(item, "") for i, item in enumerate(full)}
        return {i: f for i, f in found.items() if f is not None}
    one = _first_repeated(full, "")
    return {None: one} if one is not None else {}


def message(found: Found) -> str:
    path, key = found
    return f"the key {key!r} is sent twice in one object; JSON would keep one of its values silently: send it once"
