"""Envelope parsing and the dispatch loop: unit cases and hypothesis properties."""

from __future__ import annotations

import io
import json

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from sdworker.app import App
from sdworker.protocol.envelopes import Call, Form, Rejection, decode_line, map_inference_type
from sdworker.protocol.framing import Oversize, read_lines
from sdworker.settings import Settings


def test_read_lines_handles_bom_crlf_blank_and_oversize():
    data = b"\xef\xbb\xbf{\"a\":1}\r\n\r\n   \n" + b"x" * 100 + b"\n{\"b\":2}\n{\"c\":3}"
    out = list(read_lines(io.BytesIO(data), max_line=50))
    assert out[0] == b'{"a":1}'
    assert isinstance(out[1], Oversize) and out[1].size == 101
    assert out[2:] == [b'{"b":2}', b'{"c":3}']


def test_decode_forms():
    native = decode_line(b'{"type":"system.ping","request_id":"r","data":{"Echo":1},"priority":3,"timeout":2}').items[0]
    assert isinstance(native, Call) and native.form is Form.NATIVE and native.params == {"echo": 1}
    assert (native.priority, native.timeout) == (3, 2.0)
    rpc = decode_line(b'{"jsonrpc":"2.0","id":5,"method":"m","params":{"x":1}}').items[0]
    assert isinstance(rpc, Call) and rpc.form is Form.JSONRPC and rpc.raw_id == 5 and rpc.request_id == "5"
    note = decode_line(b'{"jsonrpc":"2.0","method":"m"}').items[0]
    assert isinstance(note, Call) and note.notification
    legacy = decode_line(b'{"action":"execute_inference","session_id":"s","prompt":"p","inference_type":"ImageToImage","parameters":{"Steps":3}}').items[0]
    assert isinstance(legacy, Call) and legacy.method == "inference.img2img" and legacy.session_id == "s"
    assert legacy.params["parameters"] == {"steps": 3} and legacy.params["prompt"] == "p"
    batch = decode_line(b'[{"jsonrpc":"2.0","id":1,"method":"a"}, 5]')
    assert batch.batch and isinstance(batch.items[1], Rejection)


def test_inference_type_mapping():
    assert map_inference_type("TextToImage") == "inference.text2img"
    assert map_inference_type("ImageGeneration") == "inference.text2img"
    assert map_inference_type("inpaint") == "inference.inpainting"
    assert map_inference_type("Image-To-Image") == "inference.img2img"


def _app() -> tuple[App, io.BytesIO]:
    out = io.BytesIO()
    return App(Settings(), out), out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" ")))
def test_any_bytes_yield_at_most_one_response(line):
    app, out = _app()
    for item in read_lines(io.BytesIO(line + b"\n")):
        app.dispatcher.handle_line(item)
    lines = [x for x in out.getvalue().split(b"\n") if x]
    assert len(lines) <= 1
    for x in lines:
        orjson.loads(x)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=15,
)
methods = st.sampled_from(["system.ping", "system.get_info", "inference.get_status", "inference.get_session_status", "nope", "inference.get_supported_types"])
envelopes = st.one_of(
    st.fixed_dictionaries({"type": methods | json_values}, optional={"request_id": json_values, "data": json_values, "priority": json_values, "timeout": json_values}),
    st.fixed_dictionaries({"jsonrpc": st.just("2.0") | json_values, "method": methods | json_values}, optional={"id": json_values, "params": json_values}),
    st.fixed_dictionaries({"action": st.sampled_from(["get_all_capabilities", "get_session_status", "bogus"]) | json_values}, optional={"session_id": json_values, "parameters": json_values}),
    json_values,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(envelopes)
def test_any_json_yields_at_most_one_response(doc):
    app, out = _app()
    app.dispatcher.handle_line(json.dumps(doc).encode())
    lines = [x for x in out.getvalue().split(b"\n") if x]
    assert len(lines) <= 1
    for x in lines:
        reply = orjson.loads(x)
        if isinstance(reply, dict) and "jsonrpc" not in reply:
            assert "success" in reply


@settings(max_examples=100, deadline=None)
@given(st.lists(envelopes, min_size=1, max_size=5))
def test_batches_answer_with_one_array(docs):
    app, out = _app()
    batch = [{"jsonrpc": "2.0", "id": i, "method": "system.ping"} if i % 2 else d for i, d in enumerate(docs)]
    app.dispatcher.handle_line(json.dumps(batch).encode())
    lines = [x for x in out.getvalue().split(b"\n") if x]
    assert len(lines) <= 1
