"""Hostile run, data and answers (issue 18): each case through the real worker, as a host drives it.

A job the host was told is queued survives a kill -9; a full disk delays the ledger but never makes
it lie; a pid reused by another process does not keep a dead run's jobs running; a request with no
denoising step is refused before it is queued; unparseable lines keep their id; true/false are not
numbers and a key sent twice (or in two spellings) is refused; compel's import failures say why.
"""

from __future__ import annotations

import base64
import io
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Worker

QUICK = {"model_id": "tiny-sdxl", "prompt": "quick", "steps": 1, "width": 64, "height": 64, "seed": 4, "output": {"return_base64": False}}
SLOW = {"model_id": "tiny-sdxl", "prompt": "slow", "steps": 150, "width": 64, "height": 64, "seed": 3}


def _statuses(data_dir: Path) -> dict[str, str]:
    """session_id -> status as a new process reads the ledger (newest record of each)."""
    with sqlite3.connect(data_dir / "sdworker.db") as conn:
        return dict(conn.execute("SELECT session_id, status FROM sessions ORDER BY created_at"))


def _png_b64(size: int = 64) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 60, 200)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def hostile(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One worker for the cases that need no kill, no fault and no special environment."""
    w = Worker(["--models-dir", str(models_dir), "--output-dir", str(tmp_path_factory.mktemp("hd-out")),
                "--data-dir", str(tmp_path_factory.mktemp("hd-data"))])
    yield w
    w.kill()


# ---- item 20: compel's import, first request of a fresh worker, and a broken compel -------------------


def test_compel_first_request_of_a_fresh_worker_runs(hostile: Worker) -> None:
    """The first request a worker gets asks for compel while torch is still being imported: compel
    (which imports torch) waits for that import instead of racing it ("compel is not installed")."""
    r = hostile.call("inference.text2img", {**QUICK, "model_id": "tiny-sd15", "prompt": "a (red)1.3 cube++", "prompt_syntax": "compel"}, timeout=300)
    assert r["success"], r


def test_a_compel_that_cannot_be_imported_says_why(spawn, tmp_path: Path) -> None:
    fake = tmp_path / "fake-site" / "compel"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("this compel is broken on purpose")\n')
    import os

    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    w = spawn(env={"PYTHONPATH": path})
    data = {**QUICK, "prompt_syntax": "compel"}
    for method in ("inference.validate_request", "inference.text2img"):
        r = w.call(method, data, timeout=300)
        if method == "inference.validate_request":
            assert r["data"]["valid"] is False, r
            details = r["data"]["errors"]
        else:
            assert r["error_code"] == "validation_error", r
            details = r["error_details"]
        assert details[0]["path"] == "data.prompt_syntax"
        assert details[0]["message"] == "compel could not be imported: ImportError: this compel is broken on purpose", details
    assert w.close() == 0
    err = w.stderr()
    assert "compel could not be imported" in err and "Traceback" in err and "broken on purpose" in err


# ---- item 14: no denoising step --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["img2img", "inpainting"])
def test_zero_denoising_steps_are_refused_before_queueing(hostile: Worker, mode: str) -> None:
    image = _png_b64()
    data = {**QUICK, "steps": 1, "strength": 0.5, "init_image": image, "session_id": f"zero-{mode}"}
    if mode == "inpainting":
        data["mask_image"] = image
    v = hostile.call("inference.validate_request", {**data, "method": f"inference.{mode}"})
    assert v["success"] and v["data"]["valid"] is False, v
    assert v["data"]["errors"][0]["path"] == "data.strength" and "steps >= 2 or strength >= 1" in v["data"]["errors"][0]["message"]
    r = hostile.call(f"inference.{mode}", data, timeout=120)
    assert r["error_code"] == "validation_error", r
    assert [(d["path"], d["message"]) for d in r["error_details"]] == [(e["path"], e["message"]) for e in v["data"]["errors"]]
    assert not hostile.events(f"zero-{mode}")  # never queued: no session_status event
    ok = hostile.call(f"inference.{mode}", {**data, "steps": 2, "session_id": f"one-{mode}"}, timeout=300)  # int(2 x 0.5) = 1 step
    assert ok["success"], ok
    assert hostile.call("inference.validate_request", {**data, "steps": 2, "method": f"inference.{mode}"})["data"]["valid"] is True


# ---- item 15: unparseable lines keep their id ----------------------------------------------------------


@pytest.mark.parametrize(
    "line, form",
    [
        (b'{"type":"system.ping","request_id":"big-num","data":{"echo":1e309}}', "native"),
        (b'{"type":"system.ping","request_id":"nan","data":{"echo":NaN}}', "native"),
        (b'{"type":"system.ping","request_id":"surrogate","data":{"echo":"\\ud800"}}', "native"),
        (b'{"type":"system.ping","request_id":"ff-byte","data":{"echo":"\xff"}}', "native"),
        (b'{"jsonrpc":"2.0","id":"rpc-nan","method":"system.ping","params":{"echo":NaN}}', "jsonrpc"),
        (b'{"jsonrpc":"2.0","id":41,"method":"system.ping","params":{"echo":"\xff"}}', "jsonrpc"),
        (b'{"action":"get_supported_types","session_id":"leg-inf","x":-Infinity}', "legacy"),
    ],
    ids=["1e309", "NaN", "lone-surrogate", "0xFF", "rpc-NaN", "rpc-0xFF", "legacy-Infinity"],
)
def test_unparseable_line_is_answered_with_its_id(hostile: Worker, line: bytes, form: str) -> None:
    hostile.send(line + b"\n")
    if form == "jsonrpc":
        ident = 41 if b"41" in line else "rpc-nan"
        r = hostile.wait_for(lambda m: isinstance(m, dict) and m.get("jsonrpc") == "2.0" and "error" in m and m.get("id") == ident)
        assert r["error"]["code"] == -32700 and r["error"]["data"]["error_code"] == "parse_error"
    elif form == "legacy":
        r = hostile.wait_for(lambda m: isinstance(m, dict) and m.get("request_id") == "leg-inf" and "success" in m)
        assert r["success"] is False and r["error_code"] == "parse_error" and r["session_id"] == "leg-inf"
    else:
        rid = line.split(b'"request_id":"')[1].split(b'"')[0].decode()
        r = hostile.response(rid)
        assert r["success"] is False and r["error_code"] == "parse_error", r
    assert hostile.call("system.ping", {"echo": "still here"})["data"]["echo"] == "still here"


@pytest.mark.parametrize(
    "line, sent_id",
    [
        (b'{"type":"system.ping","request_id":"sur\\ud800id","data":{}}', "sur\ufffdid"),
        (b'{"type":"system.ping","request_id":"ff\xffid","data":{}}', "ff\ufffdid"),
        (b'{"type":"system.ping","request_id":"utf8-surrogate","data":{"echo":"\xed\xa0\x80"}}', "utf8-surrogate"),
        (b'{"data":{"echo":NaN},"type":"system.ping","request_id":"id-last"}', "id-last"),
    ],
    ids=["surrogate-in-id", "0xFF-in-id", "utf8-encoded-surrogate", "id-after-the-bad-value"],
)
def test_an_unparseable_lines_own_id_comes_back_wire_safe(hostile: Worker, line: bytes, sent_id: str) -> None:
    """The id itself may hold what strict JSON refuses: it comes back with U+FFFD in place of the lone
    surrogate or the bad byte (what a host's UTF-8 decoder makes of them), never as null, and the
    answer is valid UTF-8 (assert_pure_stdout reads every line with orjson, which refuses bad UTF-8)."""
    hostile.send(line + b"\n")
    r = hostile.response(sent_id)
    assert r["success"] is False and r["error_code"] == "parse_error", r
    hostile.assert_pure_stdout()


def test_a_line_cut_short_keeps_id_null(hostile: Worker) -> None:
    """Not a request at all (no parser reads it): no id is guessed from its bytes, as JSON-RPC asks;
    only an oversize line is answered with the id of its first bytes."""
    hostile.send(b'{"type":"system.ping","request_id":"cut-short","data":{"echo":\n')
    r = hostile.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "response" and m.get("error_code") == "parse_error")
    assert r["request_id"] is None, r


# ---- item 16: numbers are numbers, one key one value ----------------------------------------------------


@pytest.mark.parametrize("field", ["seed", "width", "steps", "guidance_scale"])
def test_true_is_not_a_number(hostile: Worker, field: str) -> None:
    r = hostile.call("inference.text2img", {**QUICK, field: True})
    assert r["error_code"] == "validation_error", r
    assert r["error_details"][0]["path"] == f"data.{field}" and "expected a number, got true" in r["error_details"][0]["message"]


def test_two_spellings_of_one_key_are_refused(hostile: Worker) -> None:
    r = hostile.call("inference.text2img", {**QUICK, "steps": 2, "Steps": 3})
    assert r["error_code"] == "validation_error", r
    assert r["error_details"][0]["path"] == "data.Steps" and "2 vs 3" in r["error"]
    batch = hostile.call("inference.batch_process", {"requests": [{**QUICK, "prompt": "a"}, {**QUICK, "modelId": "tiny-sd15"}]})
    assert batch["error_code"] == "validation_error" and batch["error_details"][0]["path"] == "data.requests[1].modelId", batch
    hostile.send({"action": "execute_inference", "request_id": "leg-steps", "model_id": "tiny-sdxl", "prompt": "p",
                  "parameters": {"steps": 2, "NumInferenceSteps": 2, "Seed": 1, "seed": 2}})
    leg = hostile.wait_for(lambda m: m.get("request_id") == "leg-steps" and "success" in m)
    assert leg["success"] is False and leg["error_code"] == "validation_error" and "'Seed' and 'seed'" in leg["error"], leg


def test_true_is_not_a_number_in_any_form(hostile: Worker) -> None:
    """The same through a legacy `parameters` bag, JSON-RPC params, and a preset's model_specific_params
    (stored, a `clip_skip: true` would have run every later job of that preset with clip_skip 1)."""
    hostile.send({"action": "execute_inference", "request_id": "leg-bool", "model_id": "tiny-sdxl", "prompt": "p", "parameters": {"Seed": True}})
    leg = hostile.wait_for(lambda m: m.get("request_id") == "leg-bool" and "success" in m)
    assert leg["success"] is False and leg["error_code"] == "validation_error" and "expected a number, got true" in leg["error"], leg
    hostile.send({"jsonrpc": "2.0", "id": "rpc-bool", "method": "inference.text2img", "params": {**QUICK, "width": True}})
    rpc = hostile.wait_for(lambda m: m.get("id") == "rpc-bool" and ("error" in m or "result" in m))
    assert rpc["error"]["code"] == -32602 and rpc["error"]["data"]["error_details"][0]["path"] == "params.width", rpc
    for field in ("clip_skip", "guidance", "num_frames"):
        r = hostile.call("config.create", {"model_id": "tiny-sdxl", "configuration_type": "quality", "steps": 2, "cfg_scale": 5,
                                           "model_specific_params": {field: True}})
        assert r["error_code"] == "validation_error", r
        d = r["error_details"][0]
        assert d["path"] == f"data.model_specific_params.{field}" and "expected a number, got true" in d["message"], r


@pytest.mark.parametrize(
    "line, rid, path",
    [
        (b'{"type":"inference.text2img","request_id":"dup-steps","data":{"model_id":"tiny-sdxl","steps":2,"steps":3}}', "dup-steps", "data.steps"),
        (b'{"type":"inference.validate_request","request_id":"dup-deep","data":{"loras":[{"name":"a","weight":1,"weight":2}]}}', "dup-deep", "data.loras[0].weight"),
        (b'{"type":"system.ping","type":"inference.text2img","request_id":"dup-type"}', "dup-type", "type"),
    ],
)
def test_a_key_sent_twice_is_refused(hostile: Worker, line: bytes, rid: str, path: str) -> None:
    hostile.send(line + b"\n")
    r = hostile.response(rid)
    assert r["success"] is False and r["error_code"] == "validation_error", r
    assert r["error_details"][0]["path"] == path and "sent twice" in r["error"]
    assert not hostile.events(rid)  # nothing ran, nothing was queued


def test_a_key_sent_twice_in_a_batch_item_fails_that_item_only(hostile: Worker) -> None:
    line = (b'[{"jsonrpc":"2.0","id":"b-dup","method":"system.ping","params":{"echo":1,"echo":2}},'
            b'{"jsonrpc":"2.0","id":"b-ok","method":"system.ping","params":{"echo":3}},'
            b'{"jsonrpc":"2.0","method":"system.ping","params":{"echo":4,"echo":5}}]\n')
    hostile.send(line)
    out = hostile.wait_for(lambda m: isinstance(m, list) and any(isinstance(i, dict) and i.get("id") == "b-ok" for i in m))
    by_id = {item["id"]: item for item in out}
    assert set(by_id) == {"b-dup", "b-ok"}  # the notification stays silent
    assert by_id["b-ok"]["result"]["echo"] == 3
    assert by_id["b-dup"]["error"]["code"] == -32602 and by_id["b-dup"]["error"]["data"]["error_details"][0]["path"] == "params.echo"


# ---- items 7 and 9: kill -9 right after queued; a dead run's pid reused by another process ---------------


def test_kill_9_right_after_queued_then_pid_reused(spawn, tmp_path: Path) -> None:
    w = spawn()
    ids = [f"k{i}" for i in range(6)]
    w.send({"type": "inference.text2img", "request_id": ids[0], "data": SLOW})
    for rid in ids[1:]:
        w.send({"type": "inference.text2img", "request_id": rid, "data": QUICK})
    w.wait_for(lambda m: m.get("event") == "session_status" and m.get("request_id") == ids[-1] and m["data"]["status"] == "queued", timeout=120)
    w.proc.kill()  # SIGKILL the moment the last job is said to be queued
    w.proc.wait(10)
    dead = w.proc.pid
    assert set(_statuses(tmp_path / "data")) == set(ids)  # each was committed before its queued event
    # Another process now holds the dead worker's pid (as after pid wrap-around): the ledger's pid
    # check alone would think the run alive and leave its jobs queued/running forever.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with sqlite3.connect(tmp_path / "data" / "sdworker.db") as conn:
            # the dead run started an hour before the stranger (pids wrap around slowly): without this, a
            # worker killed within a second of its start would share the stranger's start time
            conn.execute("UPDATE sessions SET pid = ?, pid_started = pid_started - 3600 WHERE pid = ?", (stranger.pid, dead))
        w2 = spawn()  # same --data-dir
        for rid in ids:
            st = w2.call("inference.get_session_status", {"session_id": rid})
            assert st["success"] and st["data"]["status"] == "interrupted" and st["data"]["source"] == "ledger", st
        active = w2.call("inference.get_active_sessions", {"include_interrupted": True})["data"]
        assert active["sessions"] == [] and active["count"] == 0
        listed = {s["session_id"]: s for s in active["interrupted"]}
        assert set(listed) == set(ids) and all(s["pid"] == stranger.pid and s["current_run"] is False for s in listed.values())
        assert "interrupted" not in w2.call("inference.get_active_sessions")["data"]  # only when asked
        w2.send({"action": "get_active_sessions", "request_id": "leg-active", "include_interrupted": True})
        leg = w2.wait_for(lambda m: m.get("request_id") == "leg-active" and "success" in m)
        assert leg["success"] and {s["session_id"] for s in leg["results"]["interrupted"]} == set(ids), leg
        assert w2.close() == 0
    finally:
        stranger.kill()
        stranger.wait()


# ---- item 8: a full disk under the ledger ----------------------------------------------------------------


def _limit_file_size(pid: int, size: int | None) -> None:
    """RLIMIT_FSIZE of a running process: writes past `size` bytes of any file fail (EFBIG), as on a
    full disk (None: no limit again). Lowering it, and raising it back to the hard limit, needs no root."""
    import psutil

    proc = psutil.Process(pid)
    _, hard = proc.rlimit(psutil.RLIMIT_FSIZE)
    proc.rlimit(psutil.RLIMIT_FSIZE, (hard if size is None else size, hard))


def _wait_until(pred: Any, timeout: float = 60) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def test_a_full_disk_never_makes_the_ledger_lie(spawn, tmp_path: Path) -> None:
    data = tmp_path / "data"
    w = spawn()
    warm = w.call("inference.text2img", {**QUICK, "session_id": "warm"}, timeout=300)
    assert warm["success"], warm
    wal = data / "sdworker.db-wal"
    limit = wal.stat().st_size  # the next commit appends past it: every ledger write fails
    assert 16_000 < limit < 3_000_000, limit  # room for a 64 px PNG; far from a WAL checkpoint
    _limit_file_size(w.proc.pid, limit)
    try:
        ok = w.call("inference.text2img", {**QUICK, "session_id": "full-ok"}, timeout=300)
        assert ok["success"], ok
        png = Path(ok["data"]["images"][0]["path"])
        assert png.is_file()
        w.send({"type": "inference.text2img", "request_id": "full-cancel", "data": SLOW})
        w.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "full-cancel", timeout=300)
        w.call("inference.cancel_session", {"session_id": "full-cancel"})
        assert w.response("full-cancel", timeout=120)["error_code"] == "cancelled"
        assert _statuses(data) == {"warm": "completed"}  # neither job could be recorded yet
        assert w.call("system.ping")["success"]  # and the worker serves on
    finally:
        _limit_file_size(w.proc.pid, None)  # space again
    expected = {"warm": "completed", "full-ok": "completed", "full-cancel": "cancelled"}
    assert _wait_until(lambda: _statuses(data) == expected), _statuses(data)  # the kept writes are retried
    w.proc.kill()  # kill -9: only what the ledger holds survives
    w.proc.wait(10)
    assert "are committed now" in w.stderr()
    w2 = spawn()
    st = w2.call("inference.get_session_status", {"session_id": "full-ok", "include_logs": True})["data"]
    assert st["status"] == "completed" and st["outputs"] == [str(png)], st
    assert [t["status"] for t in st["transitions"]] == ["queued", "loading", "running", "postprocessing", "completed"]
    cancel = w2.call("inference.get_session_status", {"session_id": "full-cancel"})["data"]
    assert cancel["status"] == "cancelled" and cancel["error_code"] == "cancelled"
    assert w2.call("inference.get_active_sessions", {"include_interrupted": True})["data"]["interrupted"] == []
    assert w2.close() == 0
