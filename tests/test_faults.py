"""Faults through the real worker: the host going away, signals, unwritable outputs, broken models.

After each fault the worker must have answered what it owed, exited 0 when asked to exit, or
gone on serving (a ping answers, a good job still runs). The ledger of a clean exit holds no
session left active, so a restart reports nothing as interrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Worker

JOB = {"model_id": "tiny-sdxl", "prompt": "fault", "width": 64, "height": 64, "seed": 5, "output": {"return_base64": False}}


def _answers(w: Worker) -> dict[str, dict]:
    return {m["request_id"]: m for m in w.pending if isinstance(m, dict) and m.get("type") == "response"}


def _ledger_statuses(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(data_dir / "sdworker.db") as conn:
        return dict(conn.execute("SELECT session_id, status FROM sessions"))


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".part") or p.name.startswith("."))


# ---- the host goes away ---------------------------------------------------------------------------


@pytest.mark.parametrize("on_exit", ["finish", "cancel"])
def test_stdin_closed_mid_job(spawn, tmp_path: Path, on_exit: str) -> None:
    w = spawn("--on-exit", on_exit)
    steps = 8 if on_exit == "finish" else 150
    w.send({"type": "inference.text2img", "request_id": "mid", "data": {**JOB, "steps": steps}})
    w.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "mid", timeout=120)
    assert w.close(timeout=120) == 0  # EOF mid-job
    resp = _answers(w)["mid"]
    if on_exit == "finish":
        assert resp["success"], resp
        assert Path(resp["data"]["images"][0]["path"]).is_file()
    else:
        assert resp["error_code"] == "cancelled", resp
    w.assert_pure_stdout()
    assert _ledger_statuses(tmp_path / "data") == {"mid": "completed" if on_exit == "finish" else "cancelled"}


def test_sigterm_mid_job_answers_everything_owed(spawn, tmp_path: Path) -> None:
    w = spawn()
    w.send({"type": "inference.text2img", "request_id": "t-run", "data": {**JOB, "steps": 8}})
    w.send({"type": "inference.text2img", "request_id": "t-queued", "data": {**JOB, "steps": 1}})
    w.send({"type": "system.ping", "request_id": "t-ping"})
    w.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "t-run", timeout=120)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(120) == 0
    w.close()
    answers = _answers(w)
    assert answers["t-run"]["success"] is True  # the running job finishes
    assert answers["t-queued"]["error_code"] == "shutting_down"  # the queued one is answered, not dropped
    assert answers["t-ping"]["success"] is True
    w.assert_pure_stdout()
    assert _ledger_statuses(tmp_path / "data") == {"t-run": "completed", "t-queued": "failed"}
    with sqlite3.connect(tmp_path / "data" / "sdworker.db") as conn:
        assert conn.execute("SELECT error_code FROM sessions WHERE session_id = 't-queued'").fetchone()[0] == "shutting_down"


# ---- outputs and models (one worker for the lot) ----------------------------------------------------


@pytest.fixture(scope="module")
def faulty(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A worker with the tiny models plus private copies this module breaks: broken-unet, doomed."""
    private = tmp_path_factory.mktemp("private-models")
    shutil.copytree(models_dir / "tiny-sdxl", private / "broken-unet")
    shutil.copytree(models_dir / "tiny-sdxl", private / "doomed")
    weights = private / "broken-unet" / "unet" / "diffusion_pytorch_model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # cut before its first load
    out = tmp_path_factory.mktemp("faulty-out")
    w = Worker(["--models-dir", str(models_dir), "--models-dir", str(private), "--output-dir", str(out)])
    w.private, w.out = private, out  # type: ignore[attr-defined]
    yield w
    w.kill()


def _still_serving(w: Worker) -> None:
    assert w.call("system.ping")["success"]
    assert w.proc.poll() is None


def test_output_path_blocked_fails_cleanly(faulty: Worker) -> None:
    out: Path = faulty.out  # type: ignore[attr-defined]
    (out / "in-the-way-0.png").mkdir()  # a directory where the image file should go
    r = faulty.call("inference.text2img", {**JOB, "steps": 1, "session_id": "in-the-way"}, timeout=120)
    assert r["success"] is False and r["error_code"] == "internal_error", r
    assert "cannot write" in r["error"] and "in-the-way-0.png" in r["error"], r
    (out / "blocker").write_text("a file, not a folder")
    r = faulty.call("inference.text2img", {**JOB, "steps": 1, "output": {"save_path": "blocker/x.png", "return_base64": False}}, timeout=120)
    assert r["success"] is False and "cannot write" in r["error"], r
    assert _leftovers(out) == []  # no temp or partial file left behind
    assert list((out / "in-the-way-0.png").iterdir()) == []
    _still_serving(faulty)
    ok = faulty.call("inference.text2img", {**JOB, "steps": 1, "session_id": "after"}, timeout=120)
    assert ok["success"] and Path(ok["data"]["images"][0]["path"]).is_file()


def _make_read_only(folder: Path) -> Callable[[], None] | None:
    """Make `folder` unwritable; returns the undo, or None where that cannot be done here.

    Not root: chmod 555. Root ignores permissions, so there the folder is made immutable
    (chattr +i, ext4 and friends); without chattr support the test is skipped.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        return None
    return lambda: subprocess.run([chattr, "-i", str(folder)], check=True)


def test_read_only_output_dir_fails_cleanly(faulty: Worker) -> None:
    out: Path = faulty.out  # type: ignore[attr-defined]
    ro = out / "read-only"
    ro.mkdir()
    undo = _make_read_only(ro)
    if undo is None:
        pytest.skip("running as root without chattr +i: a folder cannot be made read-only")
    try:
        r = faulty.call("inference.text2img", {**JOB, "steps": 1, "output": {"save_path": "read-only/x.png", "return_base64": False}}, timeout=120)
        assert r["success"] is False and r["error_code"] == "internal_error", r
        assert "cannot write" in r["error"] and "read-only" in r["error"], r
        assert list(ro.iterdir()) == []  # no temp or partial file
    finally:
        undo()
    _still_serving(faulty)


def test_truncated_unet_is_model_load_failed(faulty: Worker) -> None:
    for _ in range(2):  # and stays so: nothing half-loaded is cached
        r = faulty.call("inference.text2img", {**JOB, "model_id": "broken-unet", "steps": 1}, timeout=120)
        assert r["success"] is False and r["error_code"] == "model_load_failed", r
        assert "unet" in r["error"], r
    _still_serving(faulty)
    ok = faulty.call("inference.text2img", {**JOB, "steps": 1}, timeout=120)
    assert ok["success"], ok


def test_model_folder_deleted_between_requests(faulty: Worker) -> None:
    private: Path = faulty.private  # type: ignore[attr-defined]
    first = faulty.call("inference.text2img", {**JOB, "model_id": "doomed", "steps": 1}, timeout=120)
    assert first["success"], first
    shutil.rmtree(private / "doomed")
    again = faulty.call("inference.text2img", {**JOB, "model_id": "doomed", "steps": 1}, timeout=120)
    assert again["success"] is False and "doomed" in again["error"], again
    _still_serving(faulty)
    faulty.assert_pure_stdout()
    assert again["error_code"] in ("model_not_found", "model_load_failed"), again
