"""The session ledger: unit tests of store/ledger.py, and a worker killed -9 mid-job then restarted."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdworker.jobs.sessions import Session
from sdworker.store import ledger as ledger_mod
from sdworker.store.db import DB_FILE, Database
from sdworker.store.ledger import SessionLedger, elide

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(3000)).decode()


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _session(sid: str, **kw) -> Session:
    return Session(session_id=sid, request_id=kw.pop("request_id", sid), method="inference.text2img", model_id="m", device_id="cpu", **kw)


def _run(ledger: SessionLedger, s: Session, statuses: tuple[str, ...]) -> None:
    """Drive `s` through `statuses` the way the job engine does."""
    for st in statuses:
        s.status = st
        if st == "running":
            s.started_at = time.time()
        if st in ("completed", "failed", "cancelled", "timed_out"):
            s.finished_at = time.time()
        ledger.record(s, st)


# ---- unit -----------------------------------------------------------------------------------------------


def test_elide_replaces_images_and_keeps_the_rest() -> None:
    req = {
        "prompt": "a cat",
        "init_image": PNG,
        "mask_image": "data:image/png;base64," + PNG,
        "parameters": {"controlnets": [{"image": PNG, "model": "canny"}]},
        "loras": [{"path": "x.safetensors", "weight": 0.5}],
        "long": "word " * 10000,
        "other_image": "inputs/photo.png",
    }
    out = elide(req)
    size = len(base64.b64decode(PNG))
    assert out["init_image"] == f"<image: {size} bytes>"
    assert out["mask_image"] == f"<image: {size} bytes>"
    assert out["parameters"]["controlnets"][0] == {"image": f"<image: {size} bytes>", "model": "canny"}
    assert out["loras"] == req["loras"] and out["prompt"] == "a cat" and out["other_image"] == "inputs/photo.png"
    assert len(out["long"]) < 20100 and out["long"].endswith("chars>")
    assert req["init_image"] == PNG  # the request itself is not touched


def test_records_transitions_outputs_performance_in_memory() -> None:
    led = SessionLedger(Database(None))
    s = _session("s1", request={"prompt": "p", "init_image": PNG})
    s.log("queued")
    _run(led, s, ("queued", "loading", "running"))
    s.performance.update(inference_ms=12.5, steps_per_second=3.0)
    s.outputs.append("/out/s1-0.png")
    s.step = s.total_steps = 4
    _run(led, s, ("postprocessing", "completed"))
    rec = led.lookup("s1")
    assert rec is not None
    assert rec["status"] == "completed" and rec["outputs"] == ["/out/s1-0.png"]
    assert rec["performance"] == {"inference_ms": 12.5, "steps_per_second": 3.0}
    assert [t["status"] for t in rec["transitions"]] == ["queued", "loading", "running", "postprocessing", "completed"]
    assert rec["progress"] == {"step": 4, "total_steps": 4, "percent": 100.0, "eta_seconds": None}
    assert rec["request"]["init_image"].startswith("<image: ") and rec["logs"][0]["message"] == "queued"
    assert rec["current_run"] is True and rec["started_at"].endswith("Z")
    assert led.lookup("nope") is None
    led.close()


def test_restart_marks_active_sessions_of_a_dead_run_interrupted(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    old = SessionLedger(Database(path))
    old.pid = _dead_pid()  # as if the run that wrote these had been killed
    done, running, queued = _session("done"), _session("running"), _session("queued")
    done.outputs.append("/o/done.png")
    _run(old, done, ("queued", "loading", "running", "postprocessing", "completed"))
    _run(old, running, ("queued", "loading", "running"))
    _run(old, queued, ("queued",))
    assert old.flush()
    old.db.close()  # no close(): the process "died"

    new = SessionLedger(Database(path))
    new.start()
    assert new.lookup("done")["status"] == "completed"  # type: ignore[index]
    for sid in ("running", "queued"):
        rec = new.lookup(sid)
        assert rec is not None and rec["status"] == "interrupted" and rec["current_run"] is False
        assert rec["transitions"][-1]["status"] == "interrupted" and rec["finished_at"] is not None
        assert "ended before this session finished" in rec["error"]
    assert new.interrupted_at_start == 2
    new.close()
    again = SessionLedger(Database(path))  # a second restart changes nothing more
    again.start()
    assert again.flush() and again.interrupted_at_start == 0
    assert [t["status"] for t in again.lookup("running")["transitions"]][-2:] == ["running", "interrupted"]  # type: ignore[index]
    again.close()


def test_a_live_run_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        a = SessionLedger(Database(path))
        a.pid = other.pid  # a second worker on the same data dir, still running
        _run(a, _session("busy"), ("queued", "running"))
        a.close()
        b = SessionLedger(Database(path))
        b.start()
        assert b.lookup("busy")["status"] == "running"  # type: ignore[index]
        b.close()
    finally:
        other.kill()
        other.wait()


def test_a_reused_session_id_reads_the_newest(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    first = SessionLedger(Database(path))
    s = _session("same")
    s.error, s.error_code = "boom", "internal_error"
    _run(first, s, ("queued", "failed"))
    first.close()
    second = SessionLedger(Database(path))
    _run(second, _session("same"), ("queued", "completed"))
    rec = second.lookup("same")
    assert rec is not None and rec["status"] == "completed" and rec["current_run"] is True
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM sessions WHERE session_id = 'same'").fetchone()[0] == 2
    second.close()


def test_retention_by_count_and_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_mod, "TRIM_EVERY", 5)
    led = SessionLedger(Database(tmp_path / DB_FILE), keep=3)
    active = _session("active")
    _run(led, active, ("queued",))
    for i in range(9):
        _run(led, _session(f"f{i}"), ("queued", "completed"))
    assert led.flush()
    # trimmed at the 5th and 10th insert (the 10th one still queued then): bounded meanwhile
    assert led.count() == 5
    led.trim()  # the 3 newest finished stay, and the active one always
    assert led.flush() and led.count() == 4
    assert [led.lookup(f"f{i}") is not None for i in range(9)] == [False] * 6 + [True] * 3
    assert led.lookup("active")["status"] == "queued"  # type: ignore[index]
    with led.db.read() as conn:
        keys = {r[0] for r in conn.execute("SELECT DISTINCT session_key FROM session_transitions")}
        assert len(keys) == 4  # transitions went with their sessions
    led.close()
    aged = SessionLedger(Database(tmp_path / DB_FILE), keep=100, days=1)
    with aged.db.transaction() as conn:
        conn.execute("UPDATE sessions SET finished_at = finished_at - 2 * 86400 WHERE session_id = 'f8'")
    aged.start()  # trims at start
    assert aged.flush() and aged.lookup("f8") is None and aged.lookup("f7") is not None
    aged.close()


def test_a_broken_database_never_fails_a_job(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    led = SessionLedger(Database(blocker / "sub" / DB_FILE))  # cannot be created
    s = _session("x")
    _run(led, s, ("queued", "running", "completed"))  # no exception, and no long wait
    assert led.flush(5)
    assert led.lookup("x") is None
    assert any("ledger write failed" in r.getMessage() for r in caplog.records)
    led.close()


def test_writes_are_batched_and_cheap(tmp_path: Path) -> None:
    led = SessionLedger(Database(tmp_path / DB_FILE))
    sessions = [_session(f"b{i}") for i in range(200)]
    for s in sessions:
        _run(led, s, ("queued",))  # a job's first record is committed before it returns (issue 18, item 7)
    assert led.count() == 200
    t = time.perf_counter()
    for s in sessions:
        _run(led, s, ("loading", "running"))  # not first, not final: nothing waits for the disk
    queued_ms = (time.perf_counter() - t) * 1000
    assert led.flush(30)
    with led.db.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM session_transitions").fetchone()[0] == 600
    assert queued_ms < 2000, queued_ms
    led.close()


# ---- hostile run (issue 18): durable queueing, full disk, reused pids ------------------------------------


class _SmallDisk(Database):
    """A database whose file cannot grow while `full` is set (PRAGMA max_page_count): SQLite's own
    "database or disk is full", as on a full disk, without root or a small file system."""

    full = False

    def _conn(self) -> sqlite3.Connection:
        conn = super()._conn()
        conn.execute(f"PRAGMA max_page_count = {1 if self.full else 1073741823}")  # never below the file's size
        return conn


def _rows(path: Path) -> dict[str, str]:
    """session_id -> status, read by another connection (what a new process would find)."""
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT session_id, status FROM sessions").fetchall())


def test_a_jobs_first_record_is_committed_before_it_returns(tmp_path: Path) -> None:
    led = SessionLedger(Database(tmp_path / DB_FILE))
    for i in range(6):
        _run(led, _session(f"q{i}"), ("queued",))
        assert _rows(tmp_path / DB_FILE)[f"q{i}"] == "queued"  # no flush: record() waited for the commit
    led.close()


def test_a_full_disk_delays_records_and_never_loses_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / DB_FILE
    db = _SmallDisk(path)
    led = SessionLedger(db)
    _run(led, _session("before"), ("queued", "completed"))
    db.full = True
    big = {"prompt": "x " * 9000}  # overflow pages: every insert needs the file to grow
    ok = _session("ok", request=big)
    ok.outputs.append("/o/ok-0.png")
    _run(led, ok, ("queued", "loading", "running", "postprocessing", "completed"))
    bad = _session("bad", request=big)
    bad.error, bad.error_code = "boom", "internal_error"
    _run(led, bad, ("queued", "running", "failed"))
    assert led.flush() and led.behind > 0
    assert _rows(path) == {"before": "completed"}  # nothing half written, nothing wrong
    assert any("database or disk is full" in r.getMessage() and "kept" in r.getMessage() for r in caplog.records)
    db.full = False  # space again: the kept writes go first, in order
    assert led.flush() and led.behind == 0
    assert _rows(path) == {"before": "completed", "ok": "completed", "bad": "failed"}
    rec = led.lookup("ok")
    assert rec is not None and rec["outputs"] == ["/o/ok-0.png"]
    assert [t["status"] for t in rec["transitions"]] == ["queued", "loading", "running", "postprocessing", "completed"]
    assert led.lookup("bad")["error_code"] == "internal_error"  # type: ignore[index]
    assert any("are committed now" in r.getMessage() for r in caplog.records)
    led.close()


def test_a_write_that_can_never_succeed_is_dropped_not_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from sdworker.store.write_queue import WriteQueue

    db = Database(tmp_path / DB_FILE)
    q = WriteQueue(db)
    q.put(lambda conn: conn.execute("CREATE TABLE t (v TEXT NOT NULL)"))
    q.put(lambda conn: conn.execute("INSERT INTO t VALUES (NULL)"))  # IntegrityError: a bug, not the disk
    q.put(lambda conn: conn.execute("INSERT INTO t VALUES ('after')"))
    assert q.flush() and q.behind == 0 and q.dropped == 1
    with db.read() as conn:
        assert [r[0] for r in conn.execute("SELECT v FROM t")] == ["after"]
    assert q.stop() == 0


def test_a_reused_pid_does_not_keep_a_dead_run_running(tmp_path: Path) -> None:
    import psutil

    path = tmp_path / DB_FILE
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = SessionLedger(Database(path))
        old.pid = stranger.pid
        _run(old, _session("ghost"), ("queued", "running"))
        old.close()
        with sqlite3.connect(path) as conn:
            started = conn.execute("SELECT pid_started FROM sessions").fetchone()[0]
            assert abs(started - psutil.Process(stranger.pid).create_time()) < 0.01
            # the run that wrote it started an hour earlier: `stranger` only reuses its pid
            conn.execute("UPDATE sessions SET pid_started = pid_started - 3600")
        new = SessionLedger(Database(path))
        new.start()
        rec = new.lookup("ghost")
        assert rec is not None and rec["status"] == "interrupted" and rec["pid"] == stranger.pid
        listed = new.interrupted()
        assert [r["session_id"] for r in listed] == ["ghost"] and listed[0]["source"] == "ledger"
        assert "logs" not in listed[0] and listed[0]["current_run"] is False
        new.close()
    finally:
        stranger.kill()
        stranger.wait()


# ---- through the real worker ------------------------------------------------------------------------


SLOW = {"model_id": "tiny-sdxl", "prompt": "slow", "steps": 150, "width": 64, "height": 64, "seed": 3}
QUICK = {"model_id": "tiny-sdxl", "prompt": "quick", "steps": 1, "width": 64, "height": 64, "seed": 4, "output": {"return_base64": False}}


def test_kill_9_mid_job_then_restart_reports_interrupted_and_completed(spawn, tmp_path: Path) -> None:
    w = spawn()
    done = w.call("inference.text2img", {**QUICK, "session_id": "before-kill"}, request_id="q1", timeout=120)
    assert done["success"], done
    out_path = Path(done["data"]["images"][0]["path"])
    assert out_path.is_file()
    w.send({"type": "inference.text2img", "request_id": "slow-1", "data": SLOW})
    w.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "slow-1", timeout=120)
    w.proc.kill()  # SIGKILL: no shutdown path runs
    w.proc.wait(10)
    assert w.proc.returncode == -9

    w2 = spawn()  # same --data-dir
    st = w2.call("inference.get_session_status", {"session_id": "slow-1"})
    assert st["success"], st
    data = st["data"]
    assert data["status"] == "interrupted" and data["source"] == "ledger" and data["pid"] == w.proc.pid
    assert [t["status"] for t in data["transitions"]][0] == "queued"
    assert data["transitions"][-1]["status"] == "interrupted"
    assert data["finished_at"] is not None and data["error"]

    before = w2.call("inference.get_session_status", {"session_id": "before-kill", "include_metrics": True})["data"]
    assert before["status"] == "completed" and before["outputs"] == [str(out_path)]
    assert Path(before["outputs"][0]).is_file()
    assert before["performance"]["inference_ms"] > 0 and before["progress"]["percent"] == 100.0

    logs = w2.call("inference.get_session_logs", {"session_id": "slow-1"})["data"]
    assert logs["transitions"][-1]["status"] == "interrupted" and logs["count"] >= 1
    perf = w2.call("inference.get_session_performance", {"session_id": "before-kill"})["data"]
    assert perf["status"] == "completed" and perf["performance"]["total_ms"] > 0
    # legacy form, as the C# host asks
    w2.send({"action": "get_session_status", "session_id": "slow-1", "request_id": "leg"})
    leg = w2.wait_for(lambda m: m.get("request_id") == "leg" and "success" in m)
    assert leg["success"] and leg["status"] == "interrupted", leg
    cancel = w2.call("inference.cancel_session", {"session_id": "slow-1"})["data"]
    assert cancel == {"session_id": "slow-1", "cancelled": False, "status": "interrupted", "action": "not_active", "step": 0}
    unknown = w2.call("inference.get_session_status", {"session_id": "never-existed"})
    assert unknown["error_code"] == "validation_error"
    assert w2.close() == 0
    w2.assert_pure_stdout()
