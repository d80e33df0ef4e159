"""Stock JSON-RPC clients drive the real worker under --protocol jsonrpc (SDWORKER_PROTOCOL).

Each client talks to the worker over stdio with newline framing, as a host built on it would, and
hands every stdout line to the library: the ready line and every event must be JSON-RPC
notifications, or json-rpc-2.0 rejects the line and vscode-jsonrpc logs an error. Each runs a ping,
a tiny text2img, and a cancel through `$/cancelRequest` (vscode-jsonrpc's own cancellation).

- Python: jsonrpcclient (the `test` extra).
- Node: json-rpc-2.0 and vscode-jsonrpc, installed in tests/js by `npm ci` (.ci/run does it); the
  Node tests skip cleanly when node or those packages are missing.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

JS = Path(__file__).parent / "js"
MODEL = "tiny-sd15"
LONG = {"model_id": MODEL, "prompt": "long", "steps": 150, "width": 64, "height": 64, "seed": 1}


def _worker_cmd(models_dir: Path, tmp_path: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "sdworker", "--models-dir", str(models_dir), "--output-dir", str(tmp_path / "out"),
            "--data-dir", "none", "--log-level", "WARNING", *flags]


# ---- Python: jsonrpcclient ------------------------------------------------------------------------


class StdioTransport:
    """The worker as a child; jsonrpcclient builds requests and parses responses, we move the lines."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.notifications: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(json.loads(raw))  # every line is JSON (a decode error fails the test)
        self.lines.put(None)

    def send(self, doc: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(doc).encode() + b"\n")
        self.proc.stdin.flush()

    def next_message(self, timeout: float = 300) -> dict[str, Any]:
        msg = self.lines.get(timeout=timeout)
        assert msg is not None, "the worker closed stdout"
        assert msg.get("jsonrpc") == "2.0", msg  # nothing but JSON-RPC on the wire
        if "id" not in msg:
            assert isinstance(msg.get("method"), str) and isinstance(msg.get("params"), dict), msg
            self.notifications.append(msg)
        return msg

    def wait_notification(self, pred: Any) -> dict[str, Any]:
        for n in self.notifications:
            if pred(n):
                return n
        while True:
            msg = self.next_message()
            if "id" not in msg and pred(msg):
                return msg

    def response(self, rid: Any) -> Any:
        from jsonrpcclient import parse

        while True:
            msg = self.next_message()
            if "id" in msg:
                assert msg["id"] == rid, msg
                return parse(msg)


def test_jsonrpcclient_ping_text2img_and_cancel(models_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("jsonrpcclient")
    from jsonrpcclient import Error, Ok, notification, request, request_uuid

    t = StdioTransport(_worker_cmd(models_dir, tmp_path, "--protocol", "jsonrpc"))
    try:
        ready = t.wait_notification(lambda n: n["method"] == "event.ready")
        assert ready["params"]["event"] == "ready" and "inference.text2img" in ready["params"]["data"]["methods"]

        ping = request("system.ping")
        t.send(ping)
        res = t.response(ping["id"])
        assert isinstance(res, Ok) and res.result["pong"] is True and res.id == ping["id"], res

        req = request("inference.text2img", params={"modelId": MODEL, "prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 7})
        t.send(req)
        res = t.response(req["id"])
        assert isinstance(res, Ok), res
        assert res.result["images"][0]["base64"].startswith("iVBOR") and res.result["images"][0]["seed"] == 7
        statuses = [n["params"]["data"]["status"] for n in t.notifications
                    if n["method"] == "event.session_status" and n["params"]["request_id"] == str(req["id"])]
        assert statuses[0] == "queued" and statuses[-1] == "completed", statuses

        long = request_uuid("inference.text2img", params=LONG)  # a string id, as some clients send
        t.send(long)
        t.wait_notification(lambda n: n["method"] == "event.progress" and n["params"]["request_id"] == long["id"])
        t.send(notification("$/cancelRequest", params={"id": long["id"]}))  # a notification: never answered
        res = t.response(long["id"])  # the next answer on the wire is the cancelled job's own
        assert isinstance(res, Error), res
        assert res.data["error_code"] == "cancelled", res
        statuses = [n["params"]["data"]["status"] for n in t.notifications
                    if n["method"] == "event.session_status" and n["params"]["request_id"] == long["id"]]
        assert statuses[-1] == "cancelled", statuses

        after = request("system.ping")
        t.send(after)
        assert isinstance(t.response(after["id"]), Ok)
    finally:
        assert t.proc.stdin is not None
        t.proc.stdin.close()
        assert t.proc.wait(120) == 0


def test_native_requests_get_notification_events_under_jsonrpc_protocol(models_dir: Path, tmp_path: Path) -> None:
    """Under SDWORKER_PROTOCOL=jsonrpc a native request is answered natively, but its events are notifications."""
    t = StdioTransport(_worker_cmd(models_dir, tmp_path), env={"SDWORKER_PROTOCOL": "jsonrpc"})
    try:
        ready = t.lines.get(timeout=120)
        assert ready is not None and ready["method"] == "event.ready"
        sid = f"native-{uuid.uuid4().hex[:6]}"
        t.send({"type": "inference.text2img", "request_id": sid, "data": {**LONG, "steps": 2}})
        seen: list[dict[str, Any]] = []
        while True:
            msg = t.lines.get(timeout=300)
            assert msg is not None
            if msg.get("type") == "response":
                assert msg["request_id"] == sid and msg["success"], msg
                break
            assert msg.get("jsonrpc") == "2.0" and "id" not in msg, msg
            seen.append(msg)
        assert {m["method"] for m in seen} >= {"event.session_status", "event.progress"}
        assert all(m["params"]["request_id"] == sid for m in seen)
    finally:
        assert t.proc.stdin is not None
        t.proc.stdin.close()
        assert t.proc.wait(120) == 0


# ---- Node: json-rpc-2.0 and vscode-jsonrpc ------------------------------------------------------


def _node_client(script: str, models_dir: Path, tmp_path: Path, cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    package = {"json_rpc_2.mjs": "json-rpc-2.0", "vscode_jsonrpc.mjs": "vscode-jsonrpc"}[script]
    if not (JS / "node_modules" / package / "package.json").is_file():
        pytest.skip(f"{package} is not installed: run `npm ci` in tests/js (.ci/run does)")
    full_env = {**os.environ, "SDWORKER_TEST_CMD": json.dumps(cmd), "SDWORKER_TEST_MODEL": MODEL, **(env or {})}
    proc = subprocess.run([node, str(JS / script)], cwd=JS, env=full_env, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no summary from {script} (exit {proc.returncode}); stderr tail:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1])


def _check_summary(out: dict[str, Any]) -> None:
    assert out["problems"] == [], out["problems"]
    assert out["ready"]["has_text2img"] and out["ready"]["version"]
    assert out["ping"] is True
    assert out["text2img"] == {"png": True, "seed": 7}
    assert out["text2img_statuses"][0] == "queued" and out["text2img_statuses"][-1] == "completed"
    assert out["cancel"]["error_code"] == "cancelled", out["cancel"]
    assert out["cancel"]["statuses"][-1] == "cancelled"
    assert out["after_cancel_ping"] is True
    assert out["exit_code"] == 0


def test_json_rpc_2_npm_client(models_dir: Path, tmp_path: Path) -> None:
    out = _node_client("json_rpc_2.mjs", models_dir, tmp_path, _worker_cmd(models_dir, tmp_path, "--protocol", "jsonrpc"))
    _check_summary(out)


def test_vscode_jsonrpc_client_with_cancellation_token(models_dir: Path, tmp_path: Path) -> None:
    """vscode-jsonrpc's CancellationToken sends $/cancelRequest; the request named its own session_id."""
    out = _node_client("vscode_jsonrpc.mjs", models_dir, tmp_path, _worker_cmd(models_dir, tmp_path), env={"SDWORKER_PROTOCOL": "jsonrpc"})
    _check_summary(out)


# ---- decoding of $/cancelRequest (no worker) ------------------------------------------------------


@pytest.mark.parametrize("rid, session", [(7, "7"), ("a-b", "a-b"), (0, "0")])
def test_cancel_request_decodes_to_cancel_session(rid: Any, session: str) -> None:
    from sdworker.protocol.envelopes import Call, decode_line

    line = json.dumps({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": rid}}).encode()
    call = decode_line(line).items[0]
    assert isinstance(call, Call)
    assert (call.method, call.params, call.notification) == ("inference.cancel_session", {"session_id": session}, True)


@pytest.mark.parametrize("params", [{}, {"id": None}, {"id": True}, {"id": [1]}])
def test_cancel_request_without_a_usable_id_is_a_silent_notification(params: dict[str, Any]) -> None:
    from sdworker.protocol.envelopes import Rejection, decode_line, encode_error

    line = json.dumps({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": params}).encode()
    item = decode_line(line).items[0]
    assert isinstance(item, Rejection) and item.notification
    assert encode_error(item, item.error) is None  # a notification is never answered
