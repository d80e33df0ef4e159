"""Soak: one worker under minutes of mixed traffic, jobs and cancels, watched for lost answers and drift.

A writer thread sends requests at a steady pace while the test thread reads stdout: control
calls (ping, get_status, get_session_status, validate_request), small text2img jobs on the tiny
model (64x64, 1-2 steps, at most a few in flight) and cancels of some of them. At the end every
request must have been answered exactly once, stdout must hold nothing but JSON lines, and the
worker's RSS growth from after warm-up to the end stays under a generous bound.

SDWORKER_SOAK_SECONDS (default 60) sets the length; SDWORKER_SOAK_RSS_MB the bound (default 200).
The figures are printed and written to tests/.soak/soak.json.
"""

from __future__ import annotations

import json
import os
import queue
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SECONDS = float(os.environ.get("SDWORKER_SOAK_SECONDS", "60"))
RSS_BOUND_MB = float(os.environ.get("SDWORKER_SOAK_RSS_MB", "200"))
CONTROL_PER_SECOND = 100  # control-plane requests a second
JOBS_IN_FLIGHT = 3


def _proc_status(pid: int) -> dict[str, Any]:
    """VmRSS (MB), threads and open fds of `pid`, from /proc."""
    out: dict[str, Any] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            out["rss_mb"] = round(int(value.split()[0]) / 1024, 1)
        elif key == "Threads":
            out["threads"] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


class Host:
    """The host side: ids, send times, answers per id (the test thread reads, a writer thread sends)."""

    def __init__(self, worker: Any):
        self.w = worker
        self.sent: dict[str, tuple[str, float]] = {}  # id -> (kind, send time)
        self.answers: dict[str, list[dict[str, Any]]] = {}
        self.latency_ms: dict[str, list[float]] = {}
        self.jobs_done: list[str] = []
        self.lock = threading.Lock()
        self.slots = threading.Semaphore(JOBS_IN_FLIGHT)
        self.lines = 0
        self.events = 0
        self.stray = 0

    def send(self, rid: str, kind: str, method: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.sent[rid] = (kind, time.perf_counter())
        self.w.send({"type": method, "request_id": rid, "data": data})
        self.lines += 1

    def take(self, msg: Any) -> None:
        if not isinstance(msg, dict) or "__not_json__" in msg:
            self.stray += 1
            return
        if msg.get("type") == "event":
            self.events += 1
            return
        rid = msg.get("request_id")
        with self.lock:
            self.answers.setdefault(rid, []).append(msg)
            kind, t0 = self.sent.get(rid, ("unknown", time.perf_counter()))
        self.latency_ms.setdefault(kind, []).append((time.perf_counter() - t0) * 1000)
        if kind == "job":
            self.jobs_done.append(rid)
            self.slots.release()


JOB = {"model_id": "tiny-sdxl", "width": 64, "height": 64, "output": {"return_base64": False}}


def _writer(host: Host, stop_at: float, rng: random.Random) -> None:
    n = 0
    job_ids: list[str] = []
    pace = 1.0 / CONTROL_PER_SECOND
    while time.monotonic() < stop_at:
        n += 1
        roll = rng.random()
        if roll < 0.40:
            host.send(f"ping-{n}", "ping", "system.ping", {})
        elif roll < 0.60:
            host.send(f"status-{n}", "get_status", "inference.get_status", {})
        elif roll < 0.78:
            known = job_ids and rng.random() < 0.9
            sid = rng.choice(job_ids) if known else f"unknown-{n}"
            host.send(f"sess-{n}", "get_session_status", "inference.get_session_status", {"session_id": sid})
        else:
            req = {**JOB, "prompt": f"soak {n}", "steps": rng.choice([1, 2]), "seed": n}
            if rng.random() < 0.3:
                req["steps"] = 1000  # invalid: over --max-steps
            host.send(f"val-{n}", "validate_request", "inference.validate_request", {"request": req})
        if host.slots.acquire(blocking=False):
            jid = f"job-{n}"
            job_ids.append(jid)
            host.send(jid, "job", "inference.text2img", {**JOB, "prompt": f"soak job {n}", "steps": rng.choice([1, 2]), "seed": n})
            if rng.random() < 0.2:  # cancel some: queued ones are dropped, running ones stop at a step
                host.send(f"cancel-{n}", "cancel", "inference.cancel_session", {"session_id": jid})
        time.sleep(pace)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def test_soak_mixed_traffic(spawn, tmp_path: Path) -> None:
    w = spawn("--max-queue", "64")
    pid = w.proc.pid
    at_ready = _proc_status(pid)
    warm = w.call("inference.text2img", {**JOB, "prompt": "warm-up", "steps": 1, "seed": 0}, request_id="warm", timeout=180)
    assert warm["success"], warm
    at_warm = _proc_status(pid)
    host = Host(w)
    samples = [{"t": 0.0, **at_warm}]
    t_start = time.monotonic()
    stop_at = t_start + SECONDS
    writer = threading.Thread(target=_writer, args=(host, stop_at, random.Random(20240607)), daemon=True)
    writer.start()
    next_sample = t_start + 5
    while writer.is_alive() or len(host.answers) < len(host.sent):
        if time.monotonic() > stop_at + 180:
            break  # something is owed and not coming: reported below
        try:
            host.take(w._next(0.5))
        except queue.Empty:
            pass
        if time.monotonic() >= next_sample:
            samples.append({"t": round(time.monotonic() - t_start, 1), **_proc_status(pid)})
            next_sample += 5
    elapsed = time.monotonic() - t_start
    at_end = _proc_status(pid)
    code = w.close(timeout=60)
    for msg in w.pending:  # anything read during close
        host.take(msg)

    kinds: dict[str, int] = {}
    for kind, _ in host.sent.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    lost = sorted(set(host.sent) - set(host.answers))
    dup = sorted(rid for rid, a in host.answers.items() if len(a) > 1)
    unexpected = sorted(rid for rid in host.answers if rid not in host.sent)
    outcomes: dict[str, int] = {}
    for rid in host.jobs_done:
        a = host.answers[rid][0]
        key = "completed" if a.get("success") else str(a.get("error_code"))
        outcomes[key] = outcomes.get(key, 0) + 1
    failed_control = sorted(
        rid for rid, (kind, _) in host.sent.items()
        if kind in ("ping", "get_status", "validate_request", "cancel") and host.answers.get(rid) and not host.answers[rid][0].get("success")
    )
    report = {
        "seconds": round(elapsed, 1),
        "lines_sent": host.lines,
        "by_kind": kinds,
        "answered": len(host.answers),
        "lost": len(lost),
        "duplicate": len(dup),
        "unexpected_ids": len(unexpected),
        "events": host.events,
        "stray_stdout_lines": host.stray,
        "jobs": outcomes,
        "rss_mb": {"ready": at_ready["rss_mb"], "warm": at_warm["rss_mb"], "end": at_end["rss_mb"],
                   "growth": round(at_end["rss_mb"] - at_warm["rss_mb"], 1), "max": max(s["rss_mb"] for s in samples + [at_end])},
        "threads": {"warm": at_warm["threads"], "end": at_end["threads"]},
        "fds": {"warm": at_warm["fds"], "end": at_end["fds"]},
        "latency_ms": {k: {"p50": _pct(v, 0.5), "p99": _pct(v, 0.99), "max": round(max(v), 1), "mean": round(statistics.fmean(v), 2)}
                       for k, v in sorted(host.latency_ms.items())},
        "samples": samples,
        "exit_code": code,
    }
    text = json.dumps(report, indent=2)
    print("\nsoak report:\n" + text)
    out = ROOT / ".soak"
    out.mkdir(exist_ok=True)
    (out / "soak.json").write_text(text + "\n")

    assert not lost, lost[:20]
    assert not dup and not unexpected, (dup[:20], unexpected[:20])
    assert host.stray == 0
    w.assert_pure_stdout()
    assert code == 0
    assert not failed_control, [host.answers[r][0] for r in failed_control[:5]]
    assert set(outcomes) <= {"completed", "cancelled"}, outcomes
    assert outcomes.get("completed", 0) >= 10, outcomes
    assert kinds["ping"] > 20 * SECONDS, kinds  # the pace held: thousands of lines in a default run
    assert report["rss_mb"]["growth"] < RSS_BOUND_MB, report["rss_mb"]
    assert at_end["fds"] <= at_warm["fds"] + 10, (at_warm, at_end)  # no descriptor leak per job
