"""The wire contract, checked against the real worker process as a host would see it."""

from __future__ import annotations

import base64
import io

import orjson
import pytest
from PIL import Image


def test_ready_event_lists_methods(worker):
    ready = worker.ready
    assert ready["type"] == "event" and ready["event"] == "ready"
    data = ready["data"]
    assert data["protocol"] == 1 and isinstance(data["pid"], int)
    for name in ("system.ping", "system.list_methods", "inference.text2img", "inference.cancel_session"):
        assert name in data["methods"]


def test_native_ping(worker):
    r = worker.call("system.ping", {"echo": {"x": [1, 2]}}, request_id="n1")
    assert r == {"type": "response", "request_id": "n1", "success": True, "data": r["data"]}
    assert r["data"]["pong"] is True and r["data"]["echo"] == {"x": [1, 2]}


def test_native_without_id_gets_generated_id(worker):
    worker.send({"type": "system.ping"})
    r = worker.wait_for(lambda m: m.get("type") == "response" and str(m.get("request_id", "")).startswith("req-"))
    assert r["success"] is True


def test_message_type_alias(worker):
    worker.send({"message_type": "system.ping", "request_id": "mt1"})
    assert worker.response("mt1")["success"] is True


def test_jsonrpc_request_notification_and_batch(worker):
    worker.send({"jsonrpc": "2.0", "id": 7, "method": "system.ping", "params": {"echo": "a"}})
    r = worker.wait_for(lambda m: m.get("jsonrpc") == "2.0" and m.get("id") == 7)
    assert r["result"]["echo"] == "a" and "error" not in r
    # a notification runs but is never answered: the next answer is for the request after it
    worker.send({"jsonrpc": "2.0", "method": "system.ping", "params": {"echo": "note"}})
    worker.send({"jsonrpc": "2.0", "id": "after", "method": "system.ping"})
    r = worker.wait_for(lambda m: isinstance(m, dict) and m.get("id") == "after")
    assert r["result"]["pong"] is True
    worker.send([
        {"jsonrpc": "2.0", "id": 1, "method": "system.ping"},
        {"jsonrpc": "2.0", "method": "system.ping"},
        {"jsonrpc": "2.0", "id": 2, "method": "no.such"},
        {"jsonrpc": "2.0", "id": 3, "method": "system.ping", "params": {"bogus": 1}},
    ])
    batch = worker.wait_for(lambda m: isinstance(m, list))
    by_id = {m["id"]: m for m in batch}
    assert sorted(by_id) == [1, 2, 3]
    assert by_id[1]["result"]["pong"] is True
    assert by_id[2]["error"]["code"] == -32601 and by_id[2]["error"]["data"]["error_code"] == "unknown_method"
    assert by_id[3]["error"]["code"] == -32602
    assert by_id[3]["error"]["data"]["error_details"][0]["path"] == "params.bogus"


def test_jsonrpc_invalid_requests(worker):
    worker.send([])
    r = worker.wait_for(lambda m: isinstance(m, dict) and m.get("jsonrpc") == "2.0" and m.get("id") is None)
    assert r["error"]["code"] == -32600
    worker.send({"jsonrpc": "1.0", "id": 9, "method": "system.ping"})
    r = worker.wait_for(lambda m: isinstance(m, dict) and m.get("id") == 9)
    assert r["error"]["code"] == -32600
    worker.send(b'{"jsonrpc": "2.0", "id": 10, "method": "system.ping"\n')
    r = worker.wait_for(lambda m: isinstance(m, dict) and "jsonrpc" in m and m.get("error", {}).get("code") == -32700)
    assert r["id"] is None


def test_legacy_action_shapes(worker):
    worker.send({"action": "get_all_capabilities", "session_id": "L1", "device_id": "cpu"})
    r = worker.wait_for(lambda m: m.get("request_id") == "L1")
    assert r["success"] is True and r["status"] == "completed" and r["session_id"] == "L1"
    caps = r["results"]
    assert "text2img" in caps["supported_types"] and caps["max_concurrent"] == 1
    assert caps["max_resolution"] == {"width": 2048, "height": 2048}
    dev = caps["devices"][0]
    for key in ("device_id", "name", "memory_total_mb", "memory_free_mb"):
        assert key in dev
    worker.send({"action": "get_session_status", "session_id": "nope-never"})
    r = worker.wait_for(lambda m: m.get("request_id") == "nope-never")
    assert r["success"] is False and r["error_code"] == "validation_error"
    worker.send({"action": "frobnicate", "request_id": "L2"})
    r = worker.wait_for(lambda m: m.get("request_id") == "L2")
    assert r["success"] is False and r["error_code"] == "unknown_method"


def test_key_normalization(worker):
    r = worker.call("inference.get_session_logs", {"SessionId": "missing", "Limit": 5})
    assert r["error_code"] == "validation_error" and "missing" in r["error"]
    r = worker.call("system.list_methods", {"includeSchemas": False})
    assert r["success"] and "params_schema" not in r["data"]["methods"][0]


def test_bom_crlf_and_blank_lines(worker):
    worker.send(b"\r\n\r\n")
    worker.send(b'\xef\xbb\xbf{"type":"system.ping","request_id":"bom1"}\r\n')
    worker.send(b'   \r\n{"type":"system.ping","request_id":"crlf2"}\r\n')
    assert worker.response("bom1")["success"]
    assert worker.response("crlf2")["success"]


@pytest.mark.parametrize(
    "line, code",
    [
        (b"not json at all\n", "parse_error"),
        (b'{"type": "system.ping", "request_id": "trunc"\n', "parse_error"),
        (b"[1, 2\n", "parse_error"),
        (b"42\n", "invalid_request"),
        (b'"just a string"\n', "invalid_request"),
        (b'{"request_id": "notype"}\n', "invalid_request"),
        (b'{"type": 5, "request_id": "badtype"}\n', "invalid_request"),
        (b'{"type": "system.ping", "request_id": "badprio", "priority": "high"}\n', "invalid_request"),
        (b'{"type": "system.ping", "request_id": "baddata", "data": [1]}\n', "validation_error"),
        (b'{"type": "system.nope", "request_id": "unk"}\n', "unknown_method"),
        (b"\xff\xfe\xfa garbage bytes\n", "parse_error"),
    ],
)
def test_malformed_lines_get_one_error_each(worker, line, code):
    before = len(worker.raw)
    worker.send(line)
    r = worker.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "response" and m.get("success") is False, timeout=20)
    assert r["error_code"] == code, r
    assert r["error"]
    # still serving, and only one answer was written for the bad line
    assert worker.call("system.ping")["success"]
    worker.drain(0.05)
    assert len(worker.raw) - before == 2


def test_unknown_method_suggests_close_matches(worker):
    r = worker.call("inference.txt2img")
    assert r["error_code"] == "unknown_method"
    assert "inference.text2img" in r["error"]
    assert any("inference.text2img" in d["message"] for d in r["error_details"])


def test_oversize_line_is_refused_and_worker_survives(worker):
    big = b'{"type":"system.ping","request_id":"huge","data":{"echo":"' + b"x" * 200_000 + b'"}}\n'
    worker.send(big)
    r = worker.response("huge")
    assert r["success"] is False and r["error_code"] == "invalid_request"
    assert "over the limit" in r["error"]
    assert worker.call("system.ping")["success"]


def test_validation_errors_name_the_field(worker):
    r = worker.call("inference.text2img", {"model_id": "tiny-sdxl", "width": 100000})
    assert r["error_code"] == "validation_error"
    assert r["error_details"][0]["path"] == "data.width"
    r = worker.call("inference.text2img", {"model_id": "tiny-sdxl", "steps": 0, "width": 100})
    paths = {d["path"] for d in r["error_details"]}
    assert {"data.steps", "data.width"} <= paths
    r = worker.call("inference.text2img", {"model_id": "tiny-sdxl", "guidance_scale": "lots"})
    assert r["error_details"][0]["path"] == "data.guidance_scale"
    r = worker.call("inference.text2img", {"model_id": "tiny-sdxl", "width": 4096})
    assert r["error_code"] == "validation_error" and "over the limit" in r["error"]
    r = worker.call("inference.text2img", {"model_id": "no-such-model"})
    assert r["error_code"] == "model_not_found"
    r = worker.call("inference.text2img", {"model_id": "../../etc"})
    assert r["error_code"] == "unsafe_path"
    r = worker.call("inference.text2img", {"model_id": "tiny-sdxl", "output": {"save_path": "../escape.png"}})
    assert r["error_code"] == "unsafe_path"
    r = worker.call("inference.text2img", {"model_id": "tiny-sdxl", "num_images": 2, "batch_size": 3})
    assert r["error_code"] == "validation_error" and r["error_details"][0]["path"] == "batch_size"


@pytest.mark.parametrize(
    "data,code,field",
    [
        ({"model_id": "no-such-model"}, "model_not_found", "model_id"),
        ({"model_id": "tiny-sdxl", "width": 100000}, "validation_error", "width"),
        ({"model_id": "tiny-sdxl", "output": {"save_path": "../escape.png"}}, "unsafe_path", "output.save_path"),
        ({"model_id": "tiny-sdxl", "scheduler": "no such sampler"}, "validation_error", "scheduler"),
    ],
)
def test_error_paths_are_placed_under_the_forms_root(worker, data, code, field):
    """One error, three forms: the field is under data. in native and legacy answers, under params. in JSON-RPC."""
    native = worker.call("inference.text2img", data)
    worker.send({"jsonrpc": "2.0", "id": f"paths-{field}-{code}", "method": "inference.text2img", "params": data})
    rpc = worker.wait_for(lambda m: isinstance(m, dict) and m.get("id") == f"paths-{field}-{code}")["error"]
    worker.send({"action": "execute_inference", "request_id": f"legacy-{field}-{code}", "inference_type": "text2img", **data})
    legacy = worker.wait_for(lambda m: isinstance(m, dict) and m.get("request_id") == f"legacy-{field}-{code}" and "success" in m)
    assert native["error_code"] == rpc["data"]["error_code"] == legacy["error_code"] == code
    assert native["error_details"][0]["path"] == legacy["error_details"][0]["path"] == f"data.{field}"
    assert rpc["data"]["error_details"][0]["path"] == f"params.{field}"
    assert native["error"].startswith(f"data.{field}") == rpc["message"].startswith(f"params.{field}")
    assert native["error"].replace(f"data.{field}", f"params.{field}", 1) == rpc["message"]


def test_text2img_result_shape_and_saved_file(worker):
    r = worker.call(
        "inference.text2img",
        {"model_id": "tiny-sdxl", "prompt": "a red cube", "negative_prompt": "blurry", "steps": 3, "seed": 42, "num_images": 2},
        request_id="gen1",
        timeout=120,
    )
    assert r["success"], r
    d = r["data"]
    assert d["session_id"] == "gen1"
    assert [im["seed"] for im in d["images"]] == [42, 43]
    for im in d["images"]:
        assert (im["width"], im["height"], im["format"]) == (64, 64, "png")
        png = base64.b64decode(im["base64"])
        img = Image.open(io.BytesIO(png))
        assert img.size == (64, 64)
        assert img.text["parameters"] == im["infotext"]
        assert "Negative prompt: blurry" in im["infotext"] and f"Seed: {im['seed']}" in im["infotext"]
        with open(im["path"], "rb") as fh:
            assert fh.read() == png
    p = d["parameters"]
    assert (p["width"], p["height"], p["steps"], p["seed"], p["scheduler"]) == (64, 64, 3, 42, "EulerDiscreteScheduler")
    perf = d["performance"]
    for key in ("queue_ms", "load_ms", "inference_ms", "postprocess_ms", "encode_ms", "total_ms", "steps_per_second", "peak_rss_mb"):
        assert key in perf
    assert perf["steps_per_second"] > 0 and perf["peak_rss_mb"] > 0
    statuses = [e["data"]["status"] for e in worker.events("gen1", "session_status")]
    assert statuses == ["queued", "loading", "running", "postprocessing", "completed"]
    progress = worker.events("gen1", "progress")
    assert progress and progress[-1]["data"]["step"] == progress[-1]["data"]["total_steps"] == 3
    # the session stays readable afterwards
    st = worker.call("inference.get_session_status", {"session_id": "gen1", "include_metrics": True, "include_logs": True, "include_resources": True})
    sd = st["data"]
    assert sd["status"] == "completed" and sd["progress"]["percent"] == 100.0
    assert sd["started_at"].endswith("Z") and sd["finished_at"].endswith("Z")
    assert sd["performance"]["inference_ms"] > 0 and sd["logs"] and sd["resources"]["peak_rss_mb"] > 0
    logs = worker.call("inference.get_session_logs", {"session_id": "gen1"})["data"]
    assert logs["count"] >= 3
    perf2 = worker.call("inference.get_session_performance", {"session_id": "gen1"})["data"]
    assert perf2["performance"]["inference_ms"] == perf["inference_ms"]
    res = worker.call("inference.get_session_resources", {"session_id": "gen1"})["data"]
    assert res["resources"]["device"] == "cpu"
    info = worker.call("inference.get_pipeline_info")["data"]
    assert info["pipelines"][0]["model_id"] == "tiny-sdxl"


def test_jsonrpc_generation_events_are_notifications(worker):
    worker.send({"jsonrpc": "2.0", "id": 501, "method": "inference.text2img", "params": {"modelId": "tiny-sd15", "numInferenceSteps": 2, "Seed": 3}})
    r = worker.wait_for(lambda m: isinstance(m, dict) and m.get("id") == 501, timeout=120)
    assert r["result"]["images"][0]["seed"] == 3
    notes = [m for m in worker.pending if isinstance(m, dict) and m.get("method", "").startswith("event.") and m["params"]["request_id"] == "501"]
    assert {n["method"] for n in notes} >= {"event.progress", "event.session_status"}
    assert all("id" not in n for n in notes)


def test_control_plane_methods(worker):
    for method in (
        "inference.get_capabilities",
        "inference.get_supported_types",
        "inference.get_status",
        "inference.get_active_sessions",
        "system.get_info",
        "system.list_methods",
    ):
        r = worker.call(method)
        assert r["success"], (method, r)
    dc = worker.call("inference.get_device_capabilities", {"device_id": "cpu"})["data"]
    assert dc["device_id"] == "cpu" and "text2img" in dc["supported_types"]
    assert worker.call("inference.get_device_supported_types", {"device_id": "cpu"})["data"]["supported_types"] == ["text2img", "img2img", "inpainting", "text2video", "img2video"]
    r = worker.call("inference.get_device_capabilities", {"device_id": "cuda:7"})
    assert r["error_code"] == "validation_error"
    methods = worker.call("system.list_methods")["data"]["methods"]
    t2i = next(m for m in methods if m["name"] == "inference.text2img")
    assert t2i["job"] is True and "prompt" in t2i["params_schema"]["properties"]


def test_validate_request(worker):
    ok = worker.call("inference.validate_request", {"model_id": "tiny-sdxl", "prompt": "x", "cfg_scale": 5})["data"]
    assert ok["valid"] is True and ok["normalized"]["guidance_scale"] == 5 and ok["normalized"]["width"] == 64
    bad = worker.call("inference.validate_request", {"request": {"model_id": "tiny-sdxl", "width": 100000, "steps": 0}})["data"]
    assert bad["valid"] is False
    assert {e["path"] for e in bad["errors"]} == {"data.width", "data.steps"}


def test_stdout_is_pure(worker):
    worker.drain(0.2)
    worker.assert_pure_stdout()
    assert all(b"\n" not in line[:-1] for line in worker.raw)
    assert all(orjson.loads(line) is not None for line in worker.raw)
