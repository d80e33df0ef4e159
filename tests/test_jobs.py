"""Job engine through the real worker: cancel, timeout, busy, priority, shutdown, stdout purity."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

LONG = {"model_id": "tiny-sdxl", "prompt": "long", "steps": 150, "width": 64, "height": 64, "seed": 1}
SHORT = {"model_id": "tiny-sdxl", "prompt": "short", "steps": 1, "width": 64, "height": 64, "seed": 2}


def start_long(w, rid: str, **extra) -> None:
    w.send({"type": "inference.text2img", "request_id": rid, "data": LONG, **extra})
    w.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == rid, timeout=120)


def test_cancel_mid_generation_then_next_job_succeeds(spawn):
    w = spawn()
    start_long(w, "c1")
    r = w.call("inference.cancel_session", {"session_id": "c1"})
    assert r["success"] and r["data"]["action"] == "stopping"
    step_at_cancel = r["data"]["step"]
    resp = w.response("c1", timeout=60)
    assert resp["success"] is False and resp["error_code"] == "cancelled"
    st = w.call("inference.get_session_status", {"session_id": "c1"})["data"]
    assert st["status"] == "cancelled"
    assert st["progress"]["step"] <= step_at_cancel + 1, (st["progress"], step_at_cancel)
    statuses = [e["data"]["status"] for e in w.events("c1", "session_status")]
    assert statuses[-1] == "cancelled"
    ok = w.call("inference.text2img", SHORT, request_id="c2", timeout=60)
    assert ok["success"], ok
    # cancelling a finished session says so instead of failing
    again = w.call("inference.cancel_session", {"session_id": "c1"})["data"]
    assert again["cancelled"] is False and again["status"] == "cancelled"


def test_force_cancel_and_legacy_cancel(spawn):
    w = spawn()
    start_long(w, "f1")
    w.send({"action": "cancel_session", "session_id": "f1", "force_cancel": True, "request_id": "lc"})
    ack = w.wait_for(lambda m: m.get("request_id") == "lc" and "success" in m)
    assert ack["success"] and ack["results"]["cancelled"] is True
    resp = w.response("f1", timeout=60)
    assert resp["error_code"] == "cancelled"


def test_cancel_queued_job_drops_it(spawn):
    w = spawn()
    start_long(w, "q-run")
    w.send({"type": "inference.text2img", "request_id": "q-wait", "data": SHORT})
    w.wait_for(lambda m: m.get("event") == "session_status" and m.get("request_id") == "q-wait")
    pos = w.call("inference.get_session_status", {"session_id": "q-wait"})["data"]
    assert pos["status"] == "queued" and pos["queue_position"] == 1
    active = w.call("inference.get_active_sessions")["data"]
    assert {s["session_id"] for s in active["sessions"]} == {"q-run", "q-wait"}
    r = w.call("inference.cancel_session", {"session_id": "q-wait"})["data"]
    assert r["action"] == "dropped"
    assert w.response("q-wait")["error_code"] == "cancelled"
    w.call("inference.cancel_session", {"session_id": "q-run"})
    assert w.response("q-run", timeout=60)["error_code"] == "cancelled"


def test_timeout_running_and_queued(spawn):
    # t1 cannot finish within its timeout on any machine (1000 steps at 128 px take seconds even on a
    # GPU), and it holds the executor until then, so t2 times out while queued: no speed decides it.
    w = spawn("--max-steps", "1000")
    endless = {**LONG, "steps": 1000, "width": 128, "height": 128}
    w.send({"type": "inference.text2img", "request_id": "t1", "data": endless, "timeout": 2})
    w.send({"type": "inference.text2img", "request_id": "t2", "data": SHORT, "timeout": 1})
    r2 = w.response("t2", timeout=120)
    assert r2["error_code"] == "timeout"
    r1 = w.response("t1", timeout=300)
    assert r1["error_code"] == "timeout"
    st = w.call("inference.get_session_status", {"session_id": "t1"})["data"]
    assert st["status"] == "timed_out"
    assert st["progress"]["step"] < 1000  # stopped by the timeout, not run to its end
    w.send({"type": "system.ping", "request_id": "neg", "timeout": -1})
    assert w.response("neg")["error_code"] == "invalid_request"


def test_busy_when_queue_full(spawn):
    w = spawn("--max-queue", "1")
    start_long(w, "b1")
    w.send({"type": "inference.text2img", "request_id": "b2", "data": SHORT})
    w.wait_for(lambda m: m.get("event") == "session_status" and m.get("request_id") == "b2")
    r = w.call("inference.text2img", SHORT, request_id="b3")
    assert r["error_code"] == "busy"
    dup = w.call("inference.text2img", {**SHORT, "session_id": "b2"}, request_id="b4")
    assert dup["error_code"] == "busy"
    # the control plane still answers while the job runs
    assert w.call("inference.get_status")["data"]["status"] == "busy"
    w.call("inference.cancel_session", {"session_id": "b2"})
    w.call("inference.cancel_session", {"session_id": "b1"})
    assert w.response("b1", timeout=60)["error_code"] == "cancelled"


def test_priority_order(spawn):
    w = spawn()
    start_long(w, "p-block")
    for rid, prio in (("p-low", 0), ("p-high", 5), ("p-mid", 1), ("p-low2", 0)):
        w.send({"type": "inference.text2img", "request_id": rid, "data": SHORT, "priority": prio})
    w.wait_for(lambda m: m.get("event") == "session_status" and m.get("request_id") == "p-low2")
    w.call("inference.cancel_session", {"session_id": "p-block"})
    order = []
    for _ in range(5):
        m = w.wait_for(lambda m: m.get("type") == "response" and str(m.get("request_id")).startswith("p-"), timeout=120)
        order.append(m["request_id"])
    assert order == ["p-block", "p-high", "p-mid", "p-low", "p-low2"]


def test_eof_finishes_queued_jobs_and_exits_zero(spawn):
    w = spawn()
    w.send({"type": "inference.text2img", "request_id": "e1", "data": SHORT})
    w.send({"type": "inference.text2img", "request_id": "e2", "data": {**SHORT, "seed": 9}})
    w.send({"type": "system.ping", "request_id": "e3"})
    code = w.close(timeout=120)
    assert code == 0
    answered = {m["request_id"]: m["success"] for m in w.pending if m.get("type") == "response"}
    assert answered == {"e1": True, "e2": True, "e3": True}
    w.assert_pure_stdout()


def test_eof_with_on_exit_cancel(spawn):
    w = spawn("--on-exit", "cancel")
    start_long(w, "oc1")
    w.send({"type": "inference.text2img", "request_id": "oc2", "data": SHORT})
    assert w.close(timeout=60) == 0
    answers = {m["request_id"]: m.get("error_code") for m in w.pending if m.get("type") == "response"}
    assert answers == {"oc1": "cancelled", "oc2": "shutting_down"}


def test_sigterm_lets_running_job_finish(spawn):
    w = spawn()
    job = {**LONG, "steps": 12}
    start_long_data = {"type": "inference.text2img", "request_id": "s1", "data": job}
    w.send(start_long_data)
    w.send({"type": "inference.text2img", "request_id": "s2", "data": SHORT})
    w.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "s1", timeout=120)
    w.proc.send_signal(signal.SIGTERM)
    w.send({"type": "inference.text2img", "request_id": "s3", "data": SHORT})
    assert w.proc.wait(120) == 0
    w.close()
    answers = {m["request_id"]: m.get("error_code") for m in w.pending if m.get("type") == "response"}
    assert answers["s1"] is None  # finished
    assert answers["s2"] == "shutting_down"
    assert answers.get("s3") in ("shutting_down", None) or "s3" not in answers


def test_system_shutdown(spawn):
    w = spawn()
    r = w.call("system.shutdown")
    assert r["success"] and r["data"]["shutting_down"] is True
    assert w.proc.wait(60) == 0


def test_stdout_stays_pure_when_libraries_print(spawn):
    here = Path(__file__).parent
    w = spawn(cmd=[sys.executable, str(here / "noisy_worker.py")])
    ok = w.call("inference.text2img", {**SHORT, "steps": 2}, request_id="n1", timeout=120)
    assert ok["success"]
    for i in range(50):
        w.send({"type": "system.ping", "request_id": f"np{i}"})
    for i in range(50):
        assert w.response(f"np{i}")["success"]
    time.sleep(1.5)
    assert w.close(timeout=60) == 0
    w.assert_pure_stdout()
    err = w.stderr()
    assert "stray print" in err and "stray fd-1 write" in err and "stray libc puts" in err
