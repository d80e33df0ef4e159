"""Fuzz the real worker process: valid requests interleaved with garbage, every answer accounted for.

One worker (`--max-line-bytes 65536`) gets a deterministic stream of lines:

- valid requests with unique ids (pings, status queries, validation requests) in all three forms,
  plus JSON-RPC notifications and batches;
- fixed hostile cases: a BOM at the start / in the middle / twice, NUL bytes, lone CR, vertical tab,
  huge numbers (1e400, 10**30, 5000 digits), deep nesting (up to 100000 nested arrays), lines over
  the limit (100 kB to 4 MB) and exactly at it, invalid UTF-8, UTF-16;
- garbage drawn from hypothesis strategies (random bytes, random text, random JSON, envelopes of the
  wrong shape, mutated requests, batches) with `derandomize=True`: the same bytes for the same code
  and pytest invocation (Hypothesis also mixes in literals of the loaded project modules, so the
  draws move with code changes and with which tests are collected);
- a bounded random-bytes run from `random.Random(SEED)`.

The expected number of answers is worked out per line from the contract (docs/protocol.md,
CONTRACT.md §1-2), by a model that frames the bytes the way the contract says:
lines end at LF (a lone CR is not a line end), trailing CRs and one leading UTF-8 BOM are dropped,
blank lines (ASCII whitespace only: space, tab, CR, LF, VT, FF) get nothing, a line over
--max-line-bytes gets one error, and any other line gets exactly one answer (a parse error
included) unless it is a JSON-RPC notification or a batch made only of notifications. Every stdout line must be a JSON
object or array ending in LF; the tracked ids must each be answered exactly once.

The figures go to `fuzz_figures.json` in the test's tmp dir and are printed; docs/reliability.md
quotes a real run.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

SEED = 20240607
MAX_LINE = 65536
BOM = b"\xef\xbb\xbf"
WS = b" \t\n\r\x0b\x0c"  # what counts as a blank line: Python's bytes.isspace() set
SENTINEL_EVERY = 80  # chunks between round trips (bounds the pipes, detects hangs and deaths early)
SENTINEL_TIMEOUT = 60.0
HYPOTHESIS_EXAMPLES = 300  # per strategy (6 strategies; JSON documents get twice as many)
RANDOM_CHUNKS = 4000

# Params nested past --max-json-depth (64) are refused with one invalid_request answer; before
# that limit existed, ~495 levels ended the input loop. test_deeply_nested_params_are_answered
# sends CRASH_DEPTH; the fuzz sends DEEP_OK-deep lines among the rest.
CRASH_DEPTH = 600
DEEP_OK = 490

# Methods garbage may call: answered at once, no side effects. Generated data naming any other
# method the worker lists (system.shutdown, generation jobs, model loads), or a DANGEROUS name
# (legacy actions that start or cancel jobs), is dropped: the run stays one worker and no jobs.
SAFE_METHODS = [
    "system.ping",
    "system.get_info",
    "system.list_methods",
    "inference.get_status",
    "inference.get_session_status",
    "inference.get_active_sessions",
    "inference.get_supported_types",
    "inference.validate_request",
    "inference.parse_prompt",
]
SAFE_ACTIONS = ["get_supported_types", "get_session_status", "validate_request", "get_active_sessions", "get_session_logs"]
DANGEROUS = {
    "system.shutdown", "shutdown", "execute_inference", "batch_process", "execute_controlnet",
    "inference.text2img", "inference.img2img", "inference.inpainting", "inference.controlnet",
    "inference.lora", "inference.batch_process", "inference.upscale", "inference.text2video",
    "inference.img2video", "text2img", "cancel_session", "inference.cancel_session",
}

# ---- the expectation model (the contract, not the implementation) ----------------------------------


def is_notification(doc: Any) -> bool:
    """A well-formed JSON-RPC 2.0 notification: the worker runs it and never answers."""
    return (
        isinstance(doc, dict)
        and doc.get("jsonrpc") == "2.0"
        and "id" not in doc
        and isinstance(doc.get("method"), str)
        and doc["method"] != ""
        and ("params" not in doc or isinstance(doc["params"], dict))
    )


def ambiguous(doc: Any) -> bool:
    """Shapes where the contract and JSON-RPC 2.0 leave the answer count open; generators avoid them.

    (A notification with positional params is one: JSON-RPC says no answer, the worker answers today;
    see test_notification_with_positional_params_is_not_answered.)
    """
    if isinstance(doc, list):
        return any(ambiguous(d) for d in doc)
    if not isinstance(doc, dict) or doc.get("jsonrpc") != "2.0" or "id" in doc:
        return False
    return (
        doc.get("method") == ""
        or ("params" in doc and not isinstance(doc["params"], dict))
        or "priority" in doc
        or "timeout" in doc
    )


def answers_for_line(content: bytes) -> int:
    """Answers owed to one line (without its LF), as the contract frames and answers it."""
    if len(content) > MAX_LINE:
        return 1  # "a line over the size limit gets an error response"
    line = content.rstrip(b"\r")
    if line.startswith(BOM):
        line = line[len(BOM):]
    if not line.strip(WS):
        return 0
    try:
        doc = orjson.loads(line)  # RFC 8259, strict: UTF-8 only, no NaN/Infinity, depth <= 1024
    except orjson.JSONDecodeError:
        return 1  # parse_error
    if isinstance(doc, list):
        if not doc:
            return 1  # empty batch: one invalid-request error
        return 0 if all(is_notification(d) for d in doc) else 1  # one array, or nothing at all
    return 0 if is_notification(doc) else 1


def split_lines(data: bytes) -> list[bytes]:
    assert data.endswith(b"\n"), "every chunk ends with LF"
    return data.split(b"\n")[:-1]


def key(form: str, ident: Any) -> tuple[str, str]:
    return (form, json.dumps(ident))


@dataclass
class Chunk:
    category: str
    data: bytes
    tracked: list[tuple[str, str]] = field(default_factory=list)  # ids that must be answered once

    @property
    def lines(self) -> list[bytes]:
        return split_lines(self.data)

    @property
    def expected(self) -> int:
        return sum(answers_for_line(c) for c in self.lines)


# ---- valid requests ------------------------------------------------------------------------------------


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def next(self, prefix: str = "fz") -> str:
        self.n += 1
        return f"{prefix}-{self.n}"


def native(method: str, rid: str, data: Any = None, end: bytes = b"\n") -> Chunk:
    doc: dict[str, Any] = {"type": method, "request_id": rid}
    if data is not None:
        doc["data"] = data
    return Chunk("valid", dumps(doc) + end, [key("native", rid)])


def rpc(method: str, ident: Any, params: Any = None, end: bytes = b"\n") -> Chunk:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params is not None:
        doc["params"] = params
    return Chunk("valid", dumps(doc) + end, [key("jsonrpc", ident)])


def legacy(action: str, rid: str, **fields: Any) -> Chunk:
    return Chunk("valid", dumps({"action": action, "request_id": rid, **fields}) + b"\n", [key("legacy", rid)])


def valid_requests(ids: Ids, rnd: random.Random) -> Iterable[Chunk]:
    """An endless, deterministic supply of well-formed requests with unique ids."""
    rpc_int = 7_000_000_000
    gen = {"model_id": "tiny-sdxl", "prompt": "a fox", "width": 64, "height": 64, "steps": 4, "seed": 1}
    while True:
        pick = rnd.randrange(12)
        if pick == 0:
            yield native("system.ping", ids.next(), {"echo": rnd.random()})
        elif pick == 1:
            rpc_int += 1
            yield rpc("system.ping", rpc_int, {"echo": "x"})
        elif pick == 2:
            yield rpc("inference.get_status", ids.next("fz-rpc"))
        elif pick == 3:
            yield legacy("get_supported_types", ids.next("fz-leg"))
        elif pick == 4:
            yield native("inference.get_status", ids.next())
        elif pick == 5:  # an unknown session: an error, but still exactly one answer
            yield native("inference.get_session_status", ids.next(), {"session_id": "no-such-session"})
        elif pick == 6:
            yield native("inference.validate_request", ids.next(), dict(gen, width=rnd.choice([64, 65, 100000])))
        elif pick == 7:
            yield rpc("inference.validate_request", ids.next("fz-rpc"), {"request": {"Hyperparameters": {"Width": 64, "Height": 64}, "Conditioning": {"Prompt": "x"}}})
        elif pick == 8:
            yield legacy("get_active_sessions", ids.next("fz-leg"), session_id="s", device_id="cpu")
        elif pick == 9:  # CRLF, as .NET writes
            yield native("system.ping", ids.next(), end=b"\r\n")
        elif pick == 10:  # a batch: two requests and a notification -> one array of two
            a, b = ids.next("fz-rpc"), ids.next("fz-rpc")
            batch = [
                {"jsonrpc": "2.0", "id": a, "method": "system.ping"},
                {"jsonrpc": "2.0", "method": "system.ping", "params": {"echo": "n"}},
                {"jsonrpc": "2.0", "id": b, "method": "inference.get_supported_types"},
            ]
            yield Chunk("valid", dumps(batch) + b"\n", [key("jsonrpc", a), key("jsonrpc", b)])
        else:  # a notification: runs, never answered
            yield Chunk("valid", dumps({"jsonrpc": "2.0", "method": "system.ping", "params": {"echo": "n"}}) + b"\n")


# ---- fixed hostile cases -------------------------------------------------------------------------------


def nested(depth: int, leaf: bytes = b"1", kind: str = "list") -> bytes:
    if kind == "list":
        return b"[" * depth + leaf + b"]" * depth
    return b'{"a":' * depth + leaf + b"}" * depth


def fixed_cases(ids: Ids) -> list[Chunk]:
    ping = lambda rid: dumps({"type": "system.ping", "request_id": rid})  # noqa: E731
    anon = lambda cat, data: Chunk(cat, data)  # noqa: E731
    out: list[Chunk] = []

    def tracked(cat: str, body: bytes, form: str, rid: Any, end: bytes = b"\n") -> None:
        out.append(Chunk(cat, body + end, [key(form, rid)]))

    # BOM
    r = ids.next(); tracked("bom", BOM + ping(r), "native", r)
    r = ids.next(); tracked("bom", BOM + ping(r), "native", r, end=b"\r\n")
    out += [
        anon("bom", b'{"type":"system.ping",' + BOM + b'"request_id":"x"}\n'),  # in the middle
        anon("bom", BOM + BOM + ping("x") + b"\n"),  # twice: the second is content
        anon("bom", BOM + b"\n"),  # only a BOM: blank
        anon("bom", BOM + b"  \t\r\n"),
        anon("bom", ping("x") + BOM + ping("y") + b"\n"),  # between two objects on one line
        anon("bom", ping("x") + BOM + b"\n"),  # trailing
        anon("bom", b"\xef\xbb\n"),  # a cut BOM
    ]
    # NUL
    out += [
        anon("nul", b'{"type":"system.ping","request_id":"a\x00b"}\n'),
        anon("nul", ping("x") + b"\x00\n"),
        anon("nul", b"\x00\n"),
        anon("nul", b"\x00" * 5000 + b"\n"),
        anon("nul", b"\x00" + ping("x") + b"\n"),
    ]
    r = ids.next(); tracked("nul", dumps({"type": "system.ping", "request_id": r, "data": {"echo": "a\u0000b"}}), "native", r)  # escaped NUL is fine
    # CR and other whitespace
    out += [
        anon("cr", ping("a") + b"\r" + ping("b") + b"\n"),  # a lone CR is not a line end: one bad line
        anon("cr", b"\r\n"),
        anon("cr", b"\r\r\r\n"),
        anon("cr", b"\r" + ping("x") + b"\n"),  # a leading CR is JSON whitespace: answered
        anon("cr", b" \t \r\n"),
        anon("cr", b"\x0b\x0c\n"),  # VT/FF only: treated as blank
        anon("cr", b"\n\n\n"),
        anon("cr", b"\x0c" + ping("x") + b"\n"),  # FF is not JSON whitespace: parse error
    ]
    r = ids.next(); tracked("cr", ping(r), "native", r, end=b"\r\r\n")
    r = ids.next(); tracked("cr", b"  \t" + ping(r) + b" \t ", "native", r, end=b"\r\n")
    # huge numbers
    out += [
        anon("numbers", b'{"type":"system.ping","request_id":"x","data":{"echo":1e400}}\n'),
        anon("numbers", b"1e400\n"),
        anon("numbers", b"-1e400\n"),
        anon("numbers", b'{"jsonrpc":"2.0","id":-1e400,"method":"system.ping"}\n'),
        anon("numbers", b"1" + b"0" * 5000 + b"\n"),
        anon("numbers", b'{"jsonrpc":"2.0","id":' + str(10**30).encode() + b',"method":"system.ping"}\n'),
        anon("numbers", b'{"type":"system.ping","request_id":' + str(10**30).encode() + b"}\n"),
        anon("numbers", b"[" + b",".join([b"1e308"] * 2000) + b"]\n"),
        anon("numbers", b"0.000000000000000000000000000000000000001e-400\n"),
    ]
    r = ids.next(); tracked("numbers", b'{"type":"system.ping","request_id":"' + r.encode() + b'","data":{"echo":' + str(10**30).encode() + b"}}", "native", r)
    r = ids.next(); tracked("numbers", b'{"type":"inference.validate_request","request_id":"' + r.encode() + b'","data":{"seed":' + str(10**30).encode() + b',"steps":1e300,"width":-1e308}}', "native", r)
    r = ids.next(); tracked("numbers", b'{"type":"system.ping","request_id":"' + r.encode() + b'","data":{"echo":18446744073709551615}}', "native", r)
    r = ids.next(); tracked("numbers", b'{"type":"system.ping","request_id":"' + r.encode() + b'","priority":' + str(10**30).encode() + b"}", "native", r)
    r = ids.next(); tracked("numbers", b'{"type":"system.ping","request_id":"' + r.encode() + b'","timeout":1e-300}', "native", r)
    # deep nesting
    out += [
        anon("deep", nested(100_000) + b"\n"),  # 200 kB: over the limit
        anon("deep", b"[" * 100_000 + b"\n"),
        anon("deep", nested(30_000) + b"\n"),  # 60 kB: under the limit, over any parser's depth
        anon("deep", nested(10_000, kind="dict") + b"\n"),
        anon("deep", nested(1_025) + b"\n"),
        anon("deep", nested(1_000) + b"\n"),  # a batch of one (invalid) item
        anon("deep", b'{"type":"system.ping","request_id":"x","data":' + nested(2_000, kind="dict") + b"}\n"),
    ]
    r = ids.next(); tracked("deep", b'{"type":"system.ping","request_id":"' + r.encode() + b'","data":{"echo":' + nested(200) + b"}}", "native", r)
    r = ids.next(); tracked("deep", b'{"type":"system.ping","request_id":"' + r.encode() + b'","data":{"echo":' + nested(DEEP_OK) + b"}}", "native", r)
    r = ids.next(); tracked("deep", b'{"jsonrpc":"2.0","id":"' + r.encode() + b'","method":"system.ping","params":{"echo":' + nested(300, kind="dict") + b"}}", "jsonrpc", r)
    # oversize (limit 65536) and the boundary
    big = b"x" * 100_000
    r = ids.next(); tracked("oversize", b'{"type":"system.ping","request_id":"' + r.encode() + b'","data":{"echo":"' + big + b'"}}', "native", r)
    r = ids.next("fz-rpc"); tracked("oversize", b'{"jsonrpc":"2.0","id":"' + r.encode() + b'","method":"system.ping","params":{"echo":"' + b"y" * 1_000_000 + b'"}}', "jsonrpc", r)
    tracked("oversize", b'{"jsonrpc":"2.0","id":7999999001,"method":"system.ping","params":{"echo":"' + big + b'"}}', "jsonrpc", 7999999001)
    r = ids.next("fz-leg"); tracked("oversize", b'{"action":"get_supported_types","request_id":"' + r.encode() + b'","junk":"' + big + b'"}', "legacy", r)
    r = ids.next(); tracked("oversize", BOM + b'{"type":"system.ping","request_id":"' + r.encode() + b'","data":{"echo":"' + big + b'"}}', "native", r, end=b"\r\n")
    rnd = random.Random(SEED)
    out += [
        anon("oversize", b'{"jsonrpc":"2.0","method":"system.ping","params":{"echo":"' + big + b'"}}\n'),  # a notification, but unreadable
        anon("oversize", b'{"type":"system.ping","data":{"echo":"' + big + b'"},"request_id":"late"}\n'),
        anon("oversize", bytes(rnd.getrandbits(8) for _ in range(300_000)).replace(b"\n", b" ") + b"\n"),
        anon("oversize", b" " * 4_000_000 + b"\n"),  # 4 MB of blanks is still over the limit
        anon("oversize", b"{" * 70_000 + b"\n"),
    ]
    for content_len, end in ((MAX_LINE, b"\n"), (MAX_LINE - 1, b"\r\n"), (MAX_LINE + 1, b"\n"), (MAX_LINE, b"\r\n")):
        r = ids.next()
        body = ping(r)
        body = body + b" " * (content_len - len(body) - (1 if end == b"\r\n" else 0))
        tracked("boundary", body, "native", r, end=end)
        assert len(split_lines(out[-1].data)[0]) == content_len
    # invalid UTF-8 and other encodings
    for bad in (b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xfe\xff"):
        out.append(anon("utf8", b'{"type":"system.ping","request_id":"x","data":{"echo":"' + bad + b'"}}\n'))
        out.append(anon("utf8", b'{"type":"system.ping","request_id":"x","data":{"' + bad + b'":1}}\n'))
        out.append(anon("utf8", bad + b"\n"))
    out.append(anon("utf8", ping("x").decode().encode("utf-16-le") + b"\n"))
    out.append(anon("utf8", b'"\\ud800"\n'))  # a lone surrogate escape
    r = ids.next(); tracked("utf8", dumps({"type": "system.ping", "request_id": r, "data": {"echo": "\u2028\u2029\ufeff😀"}}), "native", r)
    # JSON-RPC shapes
    out += [
        anon("shape", b"[]\n"),
        anon("shape", dumps([{"jsonrpc": "2.0", "method": "system.ping"}, {"jsonrpc": "2.0", "method": "nope", "params": {"a": 1}}]) + b"\n"),  # all notifications: nothing
        anon("shape", dumps([1, 2, 3]) + b"\n"),
        anon("shape", dumps({"jsonrpc": "2.0", "method": 1, "params": "bar"}) + b"\n"),
        anon("shape", dumps({"jsonrpc": "1.0", "method": "system.ping"}) + b"\n"),
        anon("shape", dumps({"jsonrpc": "2.0", "id": None, "method": "system.ping"}) + b"\n"),
        anon("shape", dumps({"jsonrpc": "2.0", "id": {"a": 1}, "method": "system.ping"}) + b"\n"),
        anon("shape", b"null\n"),
        anon("shape", b'"system.ping"\n'),
        anon("shape", b"{}\n"),
        anon("shape", dumps({"type": None, "request_id": None, "data": None}) + b"\n"),
        anon("shape", dumps({"action": None}) + b"\n"),
        anon("shape", dumps({"type": "system.ping", "data": [1, 2]}) + b"\n"),
        anon("shape", dumps({"message_type": "system.ping", "requestId": "camel"}) + b"\n"),
    ]
    r = ids.next(); tracked("shape", dumps({"type": "no.such.method", "request_id": r}), "native", r)
    r = ids.next(); tracked("shape", dumps({"type": "system.ping", "request_id": r, "data": "not an object"}), "native", r)
    r = ids.next("fz-rpc"); tracked("shape", dumps({"jsonrpc": "2.0", "id": r, "method": "system.ping", "params": [1, 2]}), "jsonrpc", r)
    r = ids.next("fz-leg"); tracked("shape", dumps({"action": "no_such_action", "request_id": r}), "legacy", r)
    r = ids.next("fz-leg"); tracked("shape", dumps({"action": "execute_inference", "request_id": r, "inference_type": "NoSuchType"}), "legacy", r)
    return out


# ---- hypothesis garbage ----------------------------------------------------------------------------------


def names_something_dangerous(doc: Any, forbidden: set[str]) -> bool:
    """Names a forbidden method or action (Hypothesis also draws literals of the project's own
    modules, method names included), or looks like one of the tracked ids."""
    if isinstance(doc, str):
        return doc in forbidden or doc.startswith("fz-")
    if isinstance(doc, int) and not isinstance(doc, bool):
        return 7_000_000_000 <= doc < 8_000_000_000
    if isinstance(doc, list):
        return any(names_something_dangerous(d, forbidden) for d in doc)
    if isinstance(doc, dict):
        return any(names_something_dangerous(k, forbidden) or names_something_dangerous(v, forbidden) for k, v in doc.items())
    return False


def collect(strategy: st.SearchStrategy, n: int) -> list[Any]:
    """Draw n examples from a strategy, the same ones on every run (derandomize, no shrinking)."""
    out: list[Any] = []

    @settings(
        derandomize=True,
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(x: Any) -> None:
        out.append(x)

    draw()
    return out


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=12)
method_names = st.sampled_from(SAFE_METHODS) | st.text(max_size=20)
native_env = st.fixed_dictionaries(
    {},
    optional={
        "type": method_names | json_values,
        "request_id": st.text(max_size=12) | json_values,
        "data": st.dictionaries(st.sampled_from(["echo", "session_id", "prompt", "width", "steps", "seed", "model_id", "Width", "numImages"]) | st.text(max_size=8), json_values, max_size=4) | json_values,
        "priority": json_values,
        "timeout": json_values,
    },
)
rpc_env = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2]) | json_values},
    optional={
        "id": st.integers() | st.text(max_size=12) | json_values,
        "method": method_names | json_values,
        "params": st.dictionaries(st.text(max_size=8), json_values, max_size=3) | json_values,
    },
)
legacy_env = st.fixed_dictionaries(
    {"action": st.sampled_from(SAFE_ACTIONS) | st.text(max_size=16) | json_values},
    optional={"request_id": st.text(max_size=12), "session_id": json_values, "parameters": json_values, "inference_type": json_values},
)
documents = st.one_of(json_values, native_env, rpc_env, legacy_env, st.lists(rpc_env | json_values, max_size=5))


def encode_doc(doc: Any, ascii_only: bool, crlf: bool) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass") + (b"\r\n" if crlf else b"\n")


TEMPLATES = [
    b'{"type":"system.ping","request_id":"hz-1","data":{"echo":"abc"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"inference.get_status"}',
    b'{"jsonrpc":"2.0","method":"system.ping","params":{"echo":1}}',
    b'[{"jsonrpc":"2.0","id":2,"method":"system.ping"},{"jsonrpc":"2.0","method":"system.ping"}]',
    b'{"action":"get_supported_types","request_id":"hz-2"}',
    b'{"type":"inference.validate_request","request_id":"hz-3","data":{"prompt":"a","width":64}}',
]


@st.composite
def mutated(draw: Any) -> bytes:
    """A valid request with a few byte-level edits: insert, delete, replace, truncate, duplicate."""
    data = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "duplicate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate":
            data[pos:pos] = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def hypothesis_chunks(forbidden: set[str]) -> list[Chunk]:
    out: list[Chunk] = []
    for b in collect(st.binary(min_size=1, max_size=200), HYPOTHESIS_EXAMPLES):
        out.append(Chunk("hyp-bytes", b + b"\n"))
    for t in collect(st.text(max_size=80), HYPOTHESIS_EXAMPLES):  # may hold LF, CR, NUL, U+FEFF, U+2028
        out.append(Chunk("hyp-text", t.encode("utf-8") + b"\n"))
    for t in collect(st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(), min_size=1, max_size=40), HYPOTHESIS_EXAMPLES):
        out.append(Chunk("hyp-utf8", t.encode("utf-8", "surrogatepass") + b"\n"))  # lone surrogates: invalid UTF-8
    for doc, ascii_only, crlf in collect(st.tuples(documents, st.booleans(), st.booleans()), 2 * HYPOTHESIS_EXAMPLES):
        if ambiguous(doc) or names_something_dangerous(doc, forbidden):
            continue
        out.append(Chunk("hyp-json", encode_doc(doc, ascii_only, crlf)))
    for m in collect(mutated(), HYPOTHESIS_EXAMPLES):
        out.append(Chunk("hyp-mutated", m + b"\n"))
    for parts in collect(st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b"\x00", BOM, b" ", b"\t", b"{}", b"[]", b'"', b"1e400", b"\xff", TEMPLATES[0], TEMPLATES[2]]), min_size=1, max_size=12), HYPOTHESIS_EXAMPLES):
        out.append(Chunk("hyp-framing", b"".join(parts) + b"\n"))
    # drop anything that parses to a dangerous method or one of the tracked ids
    safe = []
    for c in out:
        docs = []
        for line in c.lines:
            try:
                docs.append(orjson.loads(line.rstrip(b"\r").removeprefix(BOM)))
            except orjson.JSONDecodeError:
                pass
        if not any(names_something_dangerous(d, forbidden) or ambiguous(d) for d in docs):
            safe.append(c)
    return safe


def random_chunks(rnd: random.Random) -> list[Chunk]:
    """Bounded random bytes: half uniform, half from a JSON-ish alphabet (more near-misses)."""
    alphabet = list(b'{}[]":,.-+eE0123456789 \t\r\n\x00') + list(b"truefalsnl") + [0xEF, 0xBB, 0xBF, 0xFF, 0xC3]
    out = []
    for i in range(RANDOM_CHUNKS):
        n = rnd.randrange(0, 200)
        if i % 2:
            data = bytes(rnd.getrandbits(8) for _ in range(n))
        else:
            data = bytes(rnd.choice(alphabet) for _ in range(n))
        out.append(Chunk("random-bytes", data + b"\n"))
    return out


# ---- the run -----------------------------------------------------------------------------------------------


def classify(doc: Any) -> tuple[str, list[tuple[str, str]]]:
    """('answer' | 'event' | 'other', ids carried) for one stdout message."""
    if isinstance(doc, list):
        return "answer", [key("jsonrpc", d.get("id")) for d in doc if isinstance(d, dict)]
    if not isinstance(doc, dict):
        return "other", []
    if doc.get("type") == "event" or ("jsonrpc" in doc and "method" in doc and "id" not in doc):
        return "event", []
    if doc.get("type") == "response":
        return "answer", [key("native", doc.get("request_id"))]
    if doc.get("jsonrpc") == "2.0" and ("result" in doc or "error" in doc):
        return "answer", [key("jsonrpc", doc.get("id"))]
    if "success" in doc:
        return "answer", [key("legacy", doc.get("request_id"))]
    return "other", []


def build_plan(methods: Iterable[str] = ()) -> list[Chunk]:
    """The whole stream. `methods`: the worker's method names; all but SAFE_METHODS are kept out."""
    forbidden = DANGEROUS | (set(methods) - set(SAFE_METHODS))
    rnd = random.Random(SEED)
    ids = Ids()
    garbage = fixed_cases(ids) + hypothesis_chunks(forbidden) + random_chunks(random.Random(SEED + 1))
    rnd.shuffle(garbage)
    valid = valid_requests(ids, rnd)
    plan: list[Chunk] = []
    for g in garbage:
        plan.append(g)
        if rnd.random() < 0.5:
            plan.append(next(valid))
    return plan


def test_fuzz_worker_answers_everything_exactly_once(spawn: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    w = spawn("--max-line-bytes", str(MAX_LINE))
    building = time.monotonic()
    plan = build_plan(w.ready["data"]["methods"])
    built_s = time.monotonic() - building

    # Self-check of the model on the requests whose answers we know.
    for c in plan:
        if c.category == "valid":
            assert c.expected == (1 if c.tracked else 0), c.data[:200]
        if c.tracked and c.category != "valid":
            assert c.expected == 1, (c.category, c.data[:200])

    crashes = hangs = 0
    sent_chunks = lines_sent = bytes_sent = expected = sentinels = 0
    tracked: list[tuple[str, str]] = []
    by_category: dict[str, Counter] = {}
    death = ""
    recent: list[Chunk] = []  # the last chunks sent: the culprit of a death is among them
    for i, c in enumerate(plan):
        if w.proc.poll() is not None:
            crashes += 1
            death = f"the worker exited with {w.proc.returncode} after chunk {i}"
            break
        try:
            w.send(c.data)
        except (BrokenPipeError, OSError) as exc:
            crashes += 1
            death = f"stdin closed at chunk {i} ({c.category}: {c.data[:120]!r}): {exc}"
            break
        sent_chunks += 1
        recent = (recent + [c])[-SENTINEL_EVERY:]
        n_lines = c.data.count(b"\n")
        lines_sent += n_lines
        bytes_sent += len(c.data)
        expected += c.expected
        tracked += c.tracked
        cat = by_category.setdefault(c.category, Counter())
        cat["chunks"] += 1
        cat["lines"] += n_lines
        cat["expected"] += c.expected
        cat["bytes"] += len(c.data)
        if (i + 1) % SENTINEL_EVERY == 0:  # a round trip: bounds the pipes, catches a hang early
            rid = f"fz-sentinel-{i}"
            try:
                w.send(dumps({"type": "system.ping", "request_id": rid}) + b"\n")
                w.response(rid, timeout=SENTINEL_TIMEOUT)
            except (BrokenPipeError, OSError, EOFError) as exc:
                crashes += 1
                death = f"the worker died near chunk {i} ({c.category}: {c.data[:120]!r}): {exc!r}"
                break
            except TimeoutError:
                hangs += 1
                death = f"no answer to {rid} within {SENTINEL_TIMEOUT}s"
                break
            w.pending.clear()  # answers are judged from w.raw; keep the harness's lookups short
            sentinels += 1
            lines_sent += 1
            expected += 1
            tracked.append(key("native", rid))
    # Last: one more round trip, then EOF; the worker answers what it owes and exits 0.
    if not death:
        try:
            w.send(dumps({"type": "system.ping", "request_id": "fz-last"}) + b"\n")
            lines_sent += 1
            expected += 1
            tracked.append(key("native", "fz-last"))
            w.response("fz-last", timeout=SENTINEL_TIMEOUT)
        except (BrokenPipeError, OSError, EOFError, TimeoutError) as exc:
            crashes += 1
            death = f"no answer to the last ping: {exc!r}"
    code = w.close(timeout=120)
    if code != 0:
        crashes += 1

    # Every stdout line: JSON object or array, LF-terminated; answers matched to ids.
    stray: list[bytes] = []
    answers = events = other = 0
    seen: Counter = Counter()
    for raw in w.raw:
        try:
            doc = orjson.loads(raw) if raw.endswith(b"\n") else None
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, (dict, list)):
            stray.append(raw)
            continue
        kind, carried = classify(doc)
        if kind == "answer":
            answers += 1
            seen.update(carried)
        elif kind == "event":
            events += 1
        else:
            other += 1
    tracked_set = Counter(tracked)
    assert max(tracked_set.values()) == 1, "tracked ids are unique by construction"
    lost = [k for k in tracked_set if seen[k] == 0]
    duplicate = [k for k in tracked_set if seen[k] > 1]
    elapsed = time.monotonic() - started
    figures = {
        "seed": SEED,
        "max_line_bytes": MAX_LINE,
        "chunks_sent": sent_chunks,
        "lines_sent": lines_sent,
        "bytes_sent": bytes_sent,
        "responses_expected": expected,
        "responses_received": answers,
        "tracked_ids": len(tracked_set),
        "tracked_lost": len(lost),
        "tracked_duplicate": len(duplicate),
        "events": events,
        "other_json": other,
        "stray_lines": len(stray),
        "crashes": crashes,
        "hangs": hangs,
        "worker_exit_code": code,
        "sentinel_round_trips": sentinels,
        "plan_build_s": round(built_s, 2),
        "elapsed_s": round(elapsed, 2),
        "by_category": {k: dict(v) for k, v in sorted(by_category.items())},
        "death": death or None,
    }
    (tmp_path / "fuzz_figures.json").write_text(json.dumps(figures, indent=2))
    print("\nfuzz figures:", json.dumps(figures, indent=2))
    print(f"written to {tmp_path / 'fuzz_figures.json'}")

    suspects = "\n".join(f"  {c.category}: {c.data[:160]!r}" for c in recent[-SENTINEL_EVERY:] if c.category != "valid")
    assert crashes == 0, f"{death}\nlast garbage sent before it:\n{suspects}\nworker stderr tail:\n{w.stderr()[-1500:]}"
    assert hangs == 0, death
    assert not stray, [r[:200] for r in stray[:5]]
    assert not lost, f"{len(lost)} tracked requests got no answer, e.g. {lost[:5]}"
    assert not duplicate, f"{len(duplicate)} tracked requests were answered more than once, e.g. {duplicate[:5]}"
    assert other == 0, "stdout lines that are JSON but neither an answer nor an event"
    assert answers == expected, f"expected {expected} answers, got {answers}"
    assert events == 1, "only the ready event: no jobs were sent"


# ---- regressions: bugs the fuzzing found, fixed -------------------------------------------------


def _one_shot(spawn: Any, lines: list[bytes], timeout: float = 30) -> tuple[list[Any], int]:
    w = spawn()
    for line in lines:
        try:
            w.send(line)
        except (BrokenPipeError, OSError):
            break
    code = w.close(timeout)
    return [orjson.loads(r) for r in w.raw[1:]], code


def test_deeply_nested_params_are_answered(spawn: Any) -> None:
    deep = b'{"type":"system.ping","request_id":"deep","data":{"echo":' + nested(CRASH_DEPTH) + b"}}\n"
    after = b'{"type":"system.ping","request_id":"after"}\n'
    out, code = _one_shot(spawn, [deep, after])
    ids = [m.get("request_id") for m in out if isinstance(m, dict) and m.get("type") == "response"]
    assert code == 0
    assert ids == ["deep", "after"], out


def test_notification_with_positional_params_is_not_answered(spawn: Any) -> None:
    note = b'{"jsonrpc":"2.0","method":"system.ping","params":[1,2]}\n'
    ping = b'{"jsonrpc":"2.0","id":"p","method":"system.ping"}\n'
    out, code = _one_shot(spawn, [note, ping])
    assert code == 0
    assert [m.get("id") for m in out] == ["p"], out
