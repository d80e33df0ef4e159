#!/usr/bin/env python
"""Core benchmarks of the sdworker process, each side by side with a baseline.

    python bench/run.py [--quick] [--threads N] [--section core|modes|all] [--write docs/benchmarks.md]

(a) system.ping throughput, pipelined (one writer thread, one reader thread),
    vs a bare orjson echo loop subprocess driven the same way.     target: >= 1/4 of echo
(b) spawn -> ready event (median of spawns) vs `python -c "import orjson"`;
    also spawn -> inference.get_capabilities answered (waits for torch). target: ready < 0.3 s
(c) p50/p99 round trip of inference.get_session_status, sent every ~20 ms
    while a CPU text2img runs.                                       target: p99 < 50 ms
(d) end-to-end text2img through the worker (model warm) vs direct diffusers in a
    separate process on the same tiny model, plus the PNG encode.    target: ratio <= 1.05

With --section modes (or all), in a section of its own:
(e) mode switches text2img -> img2img -> inpainting on the loaded model: extra job
    overhead per switch, and the worker's RSS over the switches.   target: < 50 ms, RSS < +5 %
(f) inference.batch_process of 8 compatible items vs the 8 sent one by one (wall time).
(g) p50/p99 round trip of inference.validate_request over 200 requests. target: p99 < 50 ms

A tiny random-weight SDXL model is built in a temp dir first. Every child process is
killed on exit, and every wait has a timeout, so the script never hangs.
It is a script, not a test: it only prints (and with --write, writes) the figures.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import datetime as dt
import hashlib
import io
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def require_environment() -> None:
    """Say what is missing, in one line, instead of failing later inside a child process."""
    import importlib.util

    missing = [m for m in ("orjson", "torch", "diffusers", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        venv = ROOT / ".venv" / ("Scripts" if os.name == "nt" else "bin") / "python"
        print(f"{Path(sys.argv[0]).name}: this Python ({sys.executable}) lacks {', '.join(missing)}; run the benchmarks "
              f"with the Python that has sdworker installed (README, Install), e.g. {venv} {' '.join(sys.argv)}",
              file=sys.stderr)
        raise SystemExit(2)


require_environment()
import orjson  # noqa: E402

PY = sys.executable
SECTION = "## Core: ping throughput, startup, status latency, text2img"
MEASURE_TIMEOUT = 120.0  # seconds per measurement (generations get more when the CPU is slow)


class BenchTimeout(Exception):
    pass


# ---- child processes ------------------------------------------------------------------------------

_CHILDREN: list[subprocess.Popen] = []


def _kill_children() -> None:
    for p in _CHILDREN:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass


atexit.register(_kill_children)


def _on_signal(signum: int, _frame: Any) -> None:
    _kill_children()
    raise SystemExit(128 + signum)


for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


@dataclass(eq=False)
class Waiter:
    t_sent: float = 0.0
    t_recv: float = 0.0
    msg: dict[str, Any] | None = None
    event: threading.Event = field(default_factory=threading.Event)

    @property
    def rtt(self) -> float:
        return self.t_recv - self.t_sent


class Child:
    """A line-protocol child: a reader thread timestamps every stdout line as it arrives."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        self._log = open(log_path, "ab")
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=str(ROOT))
        _CHILDREN.append(self.proc)
        self._wlock = threading.Lock()
        self.first_at: float | None = None
        self.first_msg: dict[str, Any] | None = None
        self.ready = threading.Event()
        self.waiters: dict[str, Waiter] = {}
        self.responses = 0
        self.last_response_at = 0.0
        self._count_target = 0
        self.count_done = threading.Event()
        self.junk_lines = 0  # stdout lines that are not JSON objects
        self.on_event: Callable[[float, dict[str, Any]], None] | None = None
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        readline = self.proc.stdout.readline  # type: ignore[union-attr]
        try:
            while True:
                line = readline()
                t = time.perf_counter()
                if not line:
                    break
                try:
                    msg = orjson.loads(line)
                    if not isinstance(msg, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self.junk_lines += 1
                    continue
                if self.first_at is None:
                    self.first_at, self.first_msg = t, msg
                    self.ready.set()
                    continue
                kind = msg.get("type")
                if kind == "response":
                    self.responses += 1
                    self.last_response_at = t
                    if self._count_target and self.responses >= self._count_target:
                        self.count_done.set()
                    w = self.waiters.pop(msg.get("request_id"), None)
                    if w is not None:
                        w.t_recv, w.msg = t, msg
                        w.event.set()
                elif kind == "event" and self.on_event is not None:
                    self.on_event(t, msg)
        finally:
            self.closed.set()
            self.ready.set()
            self.count_done.set()
            for w in list(self.waiters.values()):
                w.event.set()

    def wait_ready(self, timeout: float) -> float:
        """Seconds from spawn to the first stdout line."""
        if not self.ready.wait(timeout) or self.first_at is None:
            raise BenchTimeout(f"no first line within {timeout:.0f}s (exit code {self.proc.poll()})")
        return self.first_at - self.t_spawn

    def send(self, msg: dict[str, Any]) -> Waiter:
        w = Waiter()
        self.waiters[msg["request_id"]] = w
        data = orjson.dumps(msg) + b"\n"
        with self._wlock:
            w.t_sent = time.perf_counter()
            self.proc.stdin.write(data)  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        return w

    def request(self, msg: dict[str, Any], timeout: float) -> Waiter:
        w = self.send(msg)
        if not w.event.wait(timeout) or w.msg is None:
            raise BenchTimeout(f"{msg.get('type')} {msg['request_id']}: no response within {timeout:.0f}s")
        if not w.msg.get("success", False):
            raise RuntimeError(f"{msg.get('type')} failed: {w.msg.get('error_code')}: {w.msg.get('error')}")
        return w

    def expect_responses(self, n: int) -> None:
        self.responses = 0
        self.count_done.clear()
        self._count_target = n

    def close(self, timeout: float = 10.0) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except Exception:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self._log.close()


ECHO = r"""
import sys, orjson
inp, out = sys.stdin.buffer, sys.stdout.buffer
out.write(b'{"type":"event","event":"ready"}\n'); out.flush()
for line in inp:
    m = orjson.loads(line)
    out.write(orjson.dumps({"type": "response", "request_id": m.get("request_id"), "success": True, "data": {"pong": True}}) + b"\n")
    out.flush()
"""

# Plain diffusers, driven over the same line protocol so both sides are timed by the same client.
DIRECT = r"""
import io, sys, time, hashlib, orjson
out = sys.stdout.buffer
sys.stdout = sys.stderr  # keep library prints off the protocol pipe
import torch, diffusers, PIL
from diffusers import DiffusionPipeline
from PIL import PngImagePlugin
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], local_files_only=True)
pipe.set_progress_bar_config(disable=True)
def send(m):
    out.write(orjson.dumps(m) + b"\n"); out.flush()
send({"type": "event", "event": "ready", "data": {"threads": torch.get_num_threads(), "torch": torch.__version__,
      "diffusers": diffusers.__version__, "pillow": PIL.__version__}})
for line in sys.stdin.buffer:
    r = orjson.loads(line); d = r["data"]
    t0 = time.perf_counter()
    image = pipe(d["prompt"], width=d["width"], height=d["height"], num_inference_steps=d["steps"],
                 guidance_scale=d["guidance_scale"], generator=[torch.Generator("cpu").manual_seed(d["seed"])]).images[0]
    t1 = time.perf_counter()
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", d["infotext"])
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    t2 = time.perf_counter()
    send({"type": "response", "request_id": r["request_id"], "success": True,
          "data": {"inference_ms": (t1 - t0) * 1e3, "encode_ms": (t2 - t1) * 1e3, "png_bytes": len(buf.getvalue()),
                   "pixels_sha256": hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()}})
"""


# ---- helpers ------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Row:
    name: str
    worker: str
    baseline: str
    target: str
    ok: bool | None  # None: informational


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="sdworker-bench-"))
        self.models = self.tmp / "models"
        self.logs = self.tmp / "logs"
        self.logs.mkdir(parents=True)
        self.env = dict(os.environ)
        n = str(args.threads)
        self.env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        src = str(ROOT / "src")
        self.env["PYTHONPATH"] = src + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.versions: dict[str, Any] = {}
        self.load_before = os.getloadavg()
        self.started = dt.datetime.now(dt.timezone.utc)
        q = args.quick
        self.n_pings = 2000 if q else 20000
        self.ping_rounds = 1 if q else 9  # a 2-core machine schedules three busy threads: many rounds, then the median
        self.spawns = 3 if q else 10
        self.size = 128 if q else 256
        self.steps = 4 if q else 20
        self.repeats = 1 if q else 3
        self.status_seconds = 2.0 if q else 8.0
        self.warm_steps = 2
        self.worker_argv = [PY, "-m", "sdworker", "--models-dir", str(self.models), "--device", "cpu", "--data-dir", "none"]

    def cleanup(self) -> None:
        _kill_children()
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def child(self, argv: list[str], name: str) -> Child:
        return Child(argv, self.env, self.logs / f"{name}.log")

    def gen_data(self, steps: int, seed: int = 1, session_id: str | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"model_id": "tiny-sdxl", "prompt": "a cat", "width": self.size, "height": self.size,
                             "steps": steps, "guidance_scale": 7.0, "seed": seed}
        if session_id:
            d["session_id"] = session_id
        return d

    # ---- setup --------------------------------------------------------------------------------------

    def build_model(self) -> None:
        log("building the tiny sdxl model")
        t0 = time.perf_counter()
        made = subprocess.run([PY, "-m", "sdworker", "make-tiny-model", "--arch", "sdxl", str(self.models / "tiny-sdxl")],
                              env=self.env, cwd=str(ROOT), timeout=300,
                              stdout=subprocess.DEVNULL, stderr=open(self.logs / "make-tiny-model.log", "ab"))
        if made.returncode != 0:
            tail = (self.logs / "make-tiny-model.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"`sdworker make-tiny-model` failed (exit {made.returncode}): {' | '.join(tail)}")
        log(f"  built in {time.perf_counter() - t0:.1f}s")

    # ---- (b) spawn -> ready -------------------------------------------------------------------------------

    def measure_spawn(self) -> None:
        log(f"(b) spawn -> ready, {self.spawns} spawns")
        ready, caps, hol = [], [], []
        for i in range(self.spawns):
            c = self.child(self.worker_argv, f"spawn-{i}")
            try:
                ready.append(c.wait_ready(MEASURE_TIMEOUT))
                if c.first_msg is None or c.first_msg.get("event") != "ready":
                    raise RuntimeError(f"first line is not the ready event: {c.first_msg}")
                # One capabilities request (it waits for torch), then a ping right behind it.
                wc = c.send({"type": "inference.get_capabilities", "request_id": "caps", "data": {}})
                wp = c.send({"type": "system.ping", "request_id": "ping", "data": {}})
                for w, what in ((wc, "get_capabilities"), (wp, "ping")):
                    if not w.event.wait(MEASURE_TIMEOUT) or w.msg is None:
                        raise BenchTimeout(f"{what} unanswered after {MEASURE_TIMEOUT:.0f}s")
                caps.append(wc.t_recv - c.t_spawn)
                hol.append(wp.rtt)
            finally:
                c.kill()
        base = []
        for _ in range(self.spawns):
            t0 = time.perf_counter()
            subprocess.run([PY, "-c", "import orjson"], env=self.env, check=True, timeout=MEASURE_TIMEOUT)
            base.append(time.perf_counter() - t0)
        r, b = statistics.median(ready), statistics.median(base)
        self.rows.append(Row(f"spawn -> ready event (median of {self.spawns})", f"{r * 1e3:.0f} ms",
                             f"{b * 1e3:.0f} ms (`python -c \"import orjson\"`)", f"< 300 ms (x{r / b:.1f} of baseline)", r < 0.3))
        cm = statistics.median(caps)
        self.rows.append(Row("spawn -> runtime ready (get_capabilities answered, median)", f"{cm:.2f} s", "-", "info", None))
        hm = statistics.median(hol)
        self.rows.append(Row("ping sent right behind get_capabilities while torch loads: round trip (median)",
                             f"{hm * 1e3:.0f} ms", "-", "info (contract: answered at once)", None))
        log(f"  ready {r * 1e3:.0f} ms (min {min(ready) * 1e3:.0f}, max {max(ready) * 1e3:.0f}); import orjson {b * 1e3:.0f} ms; "
            f"capabilities {cm:.2f} s; ping behind it {hm * 1e3:.0f} ms")

    # ---- (a) ping throughput --------------------------------------------------------------------------------

    def pipelined(self, c: Child, n: int) -> float:
        lines = [orjson.dumps({"type": "system.ping", "request_id": f"t{i}", "data": {}}) + b"\n" for i in range(n)]
        c.expect_responses(n)
        stdin = c.proc.stdin
        assert stdin is not None

        def writer() -> None:
            with c._wlock:
                for line in lines:
                    stdin.write(line)
                stdin.flush()

        t0 = time.perf_counter()
        threading.Thread(target=writer, daemon=True).start()
        if not c.count_done.wait(MEASURE_TIMEOUT) or c.responses < n:
            raise BenchTimeout(f"{c.responses}/{n} ping responses within {MEASURE_TIMEOUT:.0f}s")
        return n / (c.last_response_at - t0)

    def measure_throughput(self, worker: Child) -> None:
        log(f"(a) ping throughput, {self.n_pings} pipelined pings x {self.ping_rounds} rounds")
        echo = self.child([PY, "-c", ECHO], "echo")
        try:
            echo.wait_ready(MEASURE_TIMEOUT)
            self.pipelined(worker, 500)  # warm both
            self.pipelined(echo, 500)
            w_rates, e_rates = [], []
            for i in range(self.ping_rounds):  # alternate, so load drift hits both sides alike
                w_rates.append(self.pipelined(worker, self.n_pings))
                e_rates.append(self.pipelined(echo, self.n_pings))
                log(f"  round {i + 1}: worker {w_rates[-1]:,.0f}/s, echo {e_rates[-1]:,.0f}/s")
        finally:
            echo.kill()
        w, e = statistics.median(w_rates), statistics.median(e_rates)
        self.rows.append(Row(f"system.ping throughput, pipelined (N={self.n_pings}, median of {self.ping_rounds})",
                             f"{w:,.0f} msg/s", f"{e:,.0f} msg/s (orjson echo loop)", f">= 0.25 of echo (is {w / e:.2f})", w / e >= 0.25))

    # ---- (c) status latency during a job -------------------------------------------------------------------

    def measure_status(self, worker: Child, per_step: float) -> None:
        steps = max(2, min(50, math.ceil(self.status_seconds / max(per_step, 1e-3))))
        log(f"(c) get_session_status every 20 ms during a {steps}-step {self.size}x{self.size} text2img "
            f"(~{steps * per_step:.1f}s expected)")
        sid = "status-job"
        job = worker.send({"type": "inference.text2img", "request_id": sid, "data": self.gen_data(steps, seed=2)})
        deadline = time.perf_counter() + MEASURE_TIMEOUT + 3 * steps * per_step
        samples: list[Waiter] = []
        i = 0
        t0 = time.perf_counter()
        while not job.event.is_set():
            if time.perf_counter() > deadline:
                raise BenchTimeout("the status job did not finish in time")
            samples.append(worker.send({"type": "inference.get_session_status", "request_id": f"st{i}", "data": {"session_id": sid}}))
            i += 1
            time.sleep(max(0.0, t0 + i * 0.020 - time.perf_counter()))
        for w in samples:
            w.event.wait(max(0.0, deadline - time.perf_counter()))
        if job.msg is None or not job.msg.get("success"):
            raise RuntimeError(f"status job failed: {job.msg}")
        lost = sum(1 for w in samples if w.msg is None)
        running = [w.rtt for w in samples if w.msg is not None and w.msg.get("data", {}).get("status") == "running"]
        if not running:
            raise RuntimeError("no status request was answered while the job was running")
        p50, p99, mx = pct(running, 50), pct(running, 99), max(running)
        self.rows.append(Row(f"get_session_status round trip during text2img, p50 (n={len(running)})", f"{p50 * 1e3:.1f} ms", "-", "info", None))
        self.rows.append(Row(f"get_session_status round trip during text2img, p99 (max {mx * 1e3:.1f} ms)",
                             f"{p99 * 1e3:.1f} ms", "-", "< 50 ms", p99 < 0.050 and lost == 0))
        if lost:
            self.notes.append(f"(c): {lost} status requests got no answer.")
        log(f"  {len(samples)} sent, {len(running)} answered while running: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
            f"max {mx * 1e3:.1f} ms, unanswered {lost}")

    # ---- (d) end-to-end text2img --------------------------------------------------------------------------

    def measure_e2e(self, worker: Child, per_step: float) -> None:
        log(f"(d) text2img {self.size}x{self.size}, {self.steps} steps, {self.repeats} runs each side, interleaved")
        timeout = MEASURE_TIMEOUT + 4 * self.steps * per_step
        direct = self.child([PY, "-c", DIRECT, str(self.models / "tiny-sdxl")], "direct-diffusers")
        try:
            direct.wait_ready(MEASURE_TIMEOUT)
            info = (direct.first_msg or {}).get("data", {})
            self.versions.update(info)
            if info.get("threads") != self.args.threads:
                self.notes.append(f"(d): the direct process runs {info.get('threads')} torch threads, not {self.args.threads}.")
            infotext = f"a cat\nSteps: {self.steps}, Sampler: Euler, CFG scale: 7, Seed: 1, Size: {self.size}x{self.size}, Model: tiny-sdxl, Version: sdworker"

            def direct_run(steps: int, rid: str) -> Waiter:
                return direct.request({"type": "run", "request_id": rid, "data": {**self.gen_data(steps), "infotext": infotext}}, timeout)

            direct_run(self.warm_steps, "warm")
            w_times, d_times, w_perf, d_perf = [], [], [], []
            hashes: set[str] = set()

            def worker_run(i: int) -> None:
                w = worker.request({"type": "inference.text2img", "request_id": f"e2e{i}", "data": self.gen_data(self.steps)}, timeout)
                w_times.append(w.rtt)
                w_perf.append(w.msg["data"]["performance"])  # type: ignore[index]
                from PIL import Image

                png = base64.b64decode(w.msg["data"]["images"][0]["base64"])  # type: ignore[index]
                hashes.add(hashlib.sha256(Image.open(io.BytesIO(png)).convert("RGB").tobytes()).hexdigest())

            def direct_timed(i: int) -> None:
                d = direct_run(self.steps, f"d{i}")
                d_times.append(d.rtt)
                d_perf.append(d.msg["data"])  # type: ignore[index]
                hashes.add(d.msg["data"]["pixels_sha256"])  # type: ignore[index]

            for i in range(self.repeats):  # ABBA order, so drift and order effects hit both sides alike
                la = os.getloadavg()[0]
                for fn in ((worker_run, direct_timed) if i % 2 == 0 else (direct_timed, worker_run)):
                    fn(i)
                log(f"  run {i + 1}: worker {w_times[-1]:.2f}s, direct {d_times[-1]:.2f}s, "
                    f"ratio {w_times[-1] / d_times[-1]:.3f} (load avg {la:.2f} -> {os.getloadavg()[0]:.2f})")
        finally:
            direct.kill()
        wm, dm = statistics.median(w_times), statistics.median(d_times)
        self.rows.append(Row(f"text2img end to end, {self.size}x{self.size}, {self.steps} steps (median of {self.repeats})",
                             f"{wm:.2f} s", f"{dm:.2f} s (diffusers direct + PNG)", f"<= 1.05 (is {wm / dm:.3f})", wm / dm <= 1.05))
        wi = statistics.median(p["inference_ms"] for p in w_perf)
        di = statistics.median(p["inference_ms"] for p in d_perf)
        we = statistics.median(p["encode_ms"] for p in w_perf)
        de = statistics.median(p["encode_ms"] for p in d_perf)
        self.rows.append(Row("  of which the pipeline call (median)", f"{wi / 1e3:.2f} s", f"{di / 1e3:.2f} s", f"info (is {wi / di:.3f})", None))
        self.rows.append(Row("  of which the PNG encode (median)", f"{we:.1f} ms", f"{de:.1f} ms", "info", None))
        pairs = ", ".join(f"{a / b:.3f}" for a, b in zip(w_times, d_times))
        self.notes.append(f"(d): worker / direct per pair: {pairs}; worker total_ms median "
                          f"{statistics.median(p['total_ms'] for p in w_perf) / 1e3:.2f} s, queue_ms median "
                          f"{statistics.median(p['queue_ms'] for p in w_perf):.1f} ms.")
        same = "identical" if len(hashes) == 1 else f"DIFFERENT ({len(hashes)} distinct)"
        self.notes.append(f"(d): pixels of the worker's and the direct images (seed 1): {same}.")
        if len(hashes) != 1:
            self.rows[-3].ok = False

    # ---- run ------------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.build_model()
        self.guard("b", self.measure_spawn)
        worker = self.child(self.worker_argv, "worker")
        try:
            worker.wait_ready(MEASURE_TIMEOUT)
            log("waiting for the worker's runtime (torch import)")
            worker.request({"type": "inference.get_capabilities", "request_id": "caps", "data": {}}, MEASURE_TIMEOUT)
            info = worker.request({"type": "system.get_info", "request_id": "info", "data": {}}, MEASURE_TIMEOUT)
            rt = info.msg["data"].get("runtime", {})  # type: ignore[index]
            self.versions.setdefault("torch", rt.get("torch"))
            self.versions.setdefault("diffusers", rt.get("diffusers"))
            self.guard("a", lambda: self.measure_throughput(worker))
            log(f"warm-up text2img ({self.warm_steps} steps, loads the model)")
            per_step = 1.0
            try:
                w = worker.request({"type": "inference.text2img", "request_id": "warm", "data": self.gen_data(self.warm_steps)},
                                   MEASURE_TIMEOUT * 3)
                perf = w.msg["data"]["performance"]  # type: ignore[index]
                log(f"  warm-up {w.rtt:.2f}s (load {perf['load_ms']:.0f} ms, pipeline {perf['inference_ms']:.0f} ms)")
                # The first call pays one-off costs; a second one tells the cost of a step.
                w = worker.request({"type": "inference.text2img", "request_id": "warm2", "data": self.gen_data(self.warm_steps)},
                                   MEASURE_TIMEOUT * 3)
                perf = w.msg["data"]["performance"]  # type: ignore[index]
                per_step = perf["inference_ms"] / 1e3 / self.warm_steps
                log(f"  second warm-up {w.rtt:.2f}s: ~{per_step:.2f}s per step (VAE and text encoders included)")
            except Exception as exc:
                self.notes.append(f"warm-up failed: {exc}")
                raise
            self.guard("c", lambda: self.measure_status(worker, per_step))
            self.guard("d", lambda: self.measure_e2e(worker, per_step))
            if worker.junk_lines:
                self.notes.append(f"the worker wrote {worker.junk_lines} non-JSON line(s) on stdout.")
        finally:
            worker.kill()

    def guard(self, tag: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            log(f"({tag}) FAILED: {type(exc).__name__}: {exc}")
            self.rows.append(Row(f"({tag}) measurement", "failed", "-", f"{type(exc).__name__}: {exc}", False))

    # ---- report ----------------------------------------------------------------------------------------------

    def table(self) -> str:
        head = ["measurement", "sdworker", "baseline", "ratio / target", "pass?"]
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows:
            ok = "-" if r.ok is None else ("yes" if r.ok else "**NO**")
            out.append(f"| {r.name} | {r.worker} | {r.baseline} | {r.target} | {ok} |")
        return "\n".join(out)

    def machine(self) -> str:
        cpu = "unknown"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            cpu = platform.processor() or platform.machine()
        ram = "?"
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal"):
                    ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
        except OSError:
            pass
        v = self.versions
        la0, la1 = self.load_before, os.getloadavg()
        return "\n".join([
            f"- CPU: {cpu}, {os.cpu_count()} logical cores, RAM {ram}, no GPU used (`--device cpu`)",
            f"- Python {platform.python_version()}, torch {v.get('torch', '?')}, diffusers {v.get('diffusers', '?')}, "
            f"{platform.system()} {platform.release()}",
            f"- torch threads: {self.args.threads} on both sides (`OMP_NUM_THREADS`/`MKL_NUM_THREADS`)",
            f"- date: {self.started.strftime('%Y-%m-%d %H:%M UTC')}; load average (1 min) before {la0[0]:.2f}, after {la1[0]:.2f}"
            + (" (quick mode: smaller N, sizes and repeats)" if self.args.quick else ""),
        ])

    def section(self) -> str:
        s = self.size
        parts = [
            SECTION,
            "",
            "Measured by `python bench/run.py` on a tiny random-weight SDXL (real architecture, "
            "built by `sdworker make-tiny-model`).",
            "",
            self.machine(),
            "",
            self.table(),
            "",
            "How each row is taken:",
            f"- ping throughput: {self.n_pings} `system.ping` lines written back to back by one thread while another "
            "reads the responses; rate = N / (first write -> last response). Baseline: a `python -c` loop that "
            "`orjson.loads` each line and writes and flushes an `orjson.dumps` reply, driven the same way. "
            "Rounds alternate between the two, after the worker's runtime is ready.",
            f"- spawn -> ready: `Popen` to the first stdout line (the `ready` event), median of {self.spawns}; "
            "baseline: wall time of `python -c \"import orjson\"`. Runtime ready: `Popen` to the answer of an "
            "`inference.get_capabilities` sent right after `ready` (it waits for the torch/diffusers import); a "
            "`system.ping` sent right behind it shows whether the control plane is blocked meanwhile.",
            f"- status round trip: `inference.get_session_status` every 20 ms during a CPU text2img ({s}x{s}); "
            "write -> matching response read by a concurrent reader thread; only requests answered with "
            "status `running` count.",
            f"- text2img: request write -> response read, model already loaded by a warm-up request; baseline: "
            f"`DiffusionPipeline.from_pretrained(dir)` in a separate process, warm-up call, then "
            f"`pipe(prompt, width={s}, height={s}, num_inference_steps={self.steps}, guidance_scale=7.0, "
            "generator=[torch.Generator(\"cpu\").manual_seed(1)])` plus a PNG encode with the same text chunk, "
            "timed by the same client over a pipe. Runs alternate worker / direct.",
        ]
        if self.notes:
            parts += ["", "Notes from this run:"] + [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"


# ---- Modes: mode switches, batch_process, validate_request ------------------------------------------------

SECTION3 = "## Mode switches, batches, validation"


def _png_b64(size: int, mask: bool = False) -> str:
    """A deterministic test image (noise), or a mask with a white centre square."""
    import numpy as np
    from PIL import Image

    if mask:
        a = np.zeros((size, size), dtype=np.uint8)
        a[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
        img = Image.fromarray(a, "L")
    else:
        img = Image.fromarray(np.random.default_rng(3).integers(0, 255, (size, size, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


class Issue3:
    """(e) mode switches on a loaded model, (f) batch_process vs one by one, (g) validate_request latency.

    Runs against its own worker on the same tiny SDXL; rows and notes go to their own section.
    """

    def __init__(self, bench: Bench):
        self.b = bench
        q = bench.args.quick
        self.size = 64  # the tiny model's native size: the figures are about the worker, not denoising
        self.steps = 2 if q else 4
        self.rounds = 4 if q else 10  # text2img -> img2img -> inpainting cycles
        self.repeats = 1 if q else 3  # batch vs one-by-one pairs
        self.n_validate = 200
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def gen(self, seed: int = 1, **extra: Any) -> dict[str, Any]:
        return {"model_id": "tiny-sdxl", "prompt": "a cat", "width": self.size, "height": self.size, "steps": self.steps,
                "guidance_scale": 7.0, "seed": seed, **extra}

    def guard(self, tag: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            log(f"({tag}) FAILED: {type(exc).__name__}: {exc}")
            self.rows.append(Row(f"({tag}) measurement", "failed", "-", f"{type(exc).__name__}: {exc}", False))

    def run(self) -> None:
        worker = self.b.child(self.b.worker_argv, "worker-issue3")
        try:
            worker.wait_ready(MEASURE_TIMEOUT)
            worker.request({"type": "inference.get_capabilities", "request_id": "caps", "data": {}}, MEASURE_TIMEOUT)
            info = worker.request({"type": "system.get_info", "request_id": "info", "data": {}}, MEASURE_TIMEOUT)
            rt = info.msg["data"].get("runtime", {})  # type: ignore[index]
            self.b.versions.setdefault("torch", rt.get("torch"))
            self.b.versions.setdefault("diffusers", rt.get("diffusers"))
            log("modes: warm-up text2img (loads the model)")
            for i in range(2):
                worker.request({"type": "inference.text2img", "request_id": f"i3warm{i}", "data": self.gen()}, MEASURE_TIMEOUT * 3)
            self.guard("e", lambda: self.measure_modes(worker))
            self.guard("f", lambda: self.measure_batch(worker))
            self.guard("g", lambda: self.measure_validate(worker))
        finally:
            worker.kill()

    # ---- (e) mode switches --------------------------------------------------------------------------------

    def measure_modes(self, worker: Child) -> None:
        log(f"(e) mode switches on the loaded model: first switches, {self.rounds} cycles text2img -> img2img -> inpainting, "
            "then first switches again after a reload from the RAM cache")
        init, mask = _png_b64(self.size), _png_b64(self.size, mask=True)
        data = {
            "text2img": self.gen(),
            "img2img": self.gen(init_image=init, strength=0.75),
            "inpainting": self.gen(init_image=init, mask_image=mask, strength=0.75),
        }
        n = 0

        def overhead(mode: str) -> float:
            """ms of the job that is not denoising, encoding or saving: load, mode pipeline, scheduler, prompt."""
            nonlocal n
            n += 1
            w = worker.request({"type": f"inference.{mode}", "request_id": f"mode{n}", "data": data[mode]}, MEASURE_TIMEOUT)
            p = w.msg["data"]["performance"]  # type: ignore[index]
            return p["total_ms"] - p["queue_ms"] - p["inference_ms"] - p["encode_ms"] - p["postprocess_ms"]

        rss0 = _rss_mb(worker.proc.pid)
        first = {m: overhead(m) for m in ("img2img", "inpainting")}  # the process's first: includes diffusers' imports
        rss_mid = _rss_mb(worker.proc.pid)
        same = {m: statistics.median(overhead(m) for _ in range(5)) for m in data}  # no switch: the baseline
        cycled: dict[str, list[float]] = {m: [] for m in data}
        for _ in range(self.rounds):
            for m in data:
                cycled[m].append(overhead(m))
        rss1 = _rss_mb(worker.proc.pid)
        # A model built anew (from the RAM cache) has no mode pipelines yet: its first switches build them.
        worker.request({"type": "model.unload_model", "request_id": "unload", "data": {"model_id": "tiny-sdxl", "keep_in_ram": True}}, MEASURE_TIMEOUT)
        overhead("text2img")
        fresh = {m: overhead(m) for m in ("img2img", "inpainting")}
        self.rows.append(Row("first img2img job of the process: extra job overhead", f"{first['img2img'] - same['img2img']:.0f} ms",
                             f"{same['img2img']:.1f} ms overhead with no switch", "info (one-time import of diffusers' auto pipelines)", None))
        for m in ("img2img", "inpainting"):
            extra = fresh[m] - same[m]
            self.rows.append(Row(f"first switch to {m} on a freshly built model (from_pipe): extra job overhead", f"{extra:.1f} ms",
                                 f"{same[m]:.1f} ms overhead with no switch", "< 50 ms", extra < 50))
        warm = statistics.median(statistics.median(cycled[m]) - same[m] for m in data)
        worst = max(max(cycled[m]) - same[m] for m in data)
        self.rows.append(Row(f"later switches (cycling, {self.rounds} x 3 jobs): extra overhead per switch (median; max {worst:.1f} ms)",
                             f"{warm:.1f} ms", "same-mode jobs", "< 50 ms", warm < 50))
        self.rows.append(Row("worker RSS, first img2img and inpainting jobs", f"{rss0:.0f} -> {rss_mid:.0f} MB", "-",
                             f"info ({(rss_mid - rss0) / rss0 * 100:+.1f} %: imports, mode pipelines)", None))
        growth = (rss1 - rss_mid) / rss_mid
        self.rows.append(Row(f"worker RSS over the next {15 + 3 * self.rounds} jobs ({3 * self.rounds} of them cycling modes)",
                             f"{rss_mid:.0f} -> {rss1:.0f} MB", "-", f"< 5 % growth (is {growth * 100:+.1f} %)", growth < 0.05))
        log("  first switches of the process: " + ", ".join(f"{m} +{first[m] - same[m]:.1f} ms" for m in first)
            + "; of a rebuilt model: " + ", ".join(f"{m} +{fresh[m] - same[m]:.1f} ms" for m in fresh)
            + f"; cycling +{warm:.1f} ms; RSS {rss0:.0f} -> {rss_mid:.0f} -> {rss1:.0f} MB")

    # ---- (f) batch_process vs one by one -----------------------------------------------------------------------

    def measure_batch(self, worker: Child) -> None:
        log(f"(f) batch_process of 8 compatible items vs 8 text2img one by one, {self.repeats} pair(s)")
        items = [self.gen(seed=100 + i, prompt=f"a cat, take {i}") for i in range(8)]
        timeout = MEASURE_TIMEOUT * 3
        batch_s, single_s, calls = [], [], set()
        for r in range(self.repeats):
            def batched(r: int = r) -> None:  # bound now: called within this round
                w = worker.request({"type": "inference.batch_process", "request_id": f"batch{r}",
                                    "data": {"requests": items, "batch_config": {"batch_size": 8, "enable_dynamic_sizing": False}}}, timeout)
                batch_s.append(w.rtt)
                calls.add(w.msg["data"]["performance"].get("pipeline_calls"))  # type: ignore[index]

            def one_by_one(r: int = r) -> None:
                t0 = time.perf_counter()
                for i, it in enumerate(items):
                    worker.request({"type": "inference.text2img", "request_id": f"one{r}-{i}", "data": it}, timeout)
                single_s.append(time.perf_counter() - t0)

            la = os.getloadavg()[0]
            for fn in ((batched, one_by_one) if r % 2 == 0 else (one_by_one, batched)):
                fn()
            log(f"  pair {r + 1}: batch {batch_s[-1]:.2f}s, one by one {single_s[-1]:.2f}s (load avg {la:.2f} -> {os.getloadavg()[0]:.2f})")
        self.notes.append("(f): batch / one by one per pair: " + ", ".join(f"{b:.2f} s / {o:.2f} s" for b, o in zip(batch_s, single_s)) + ".")
        b, s = statistics.median(batch_s), statistics.median(single_s)
        self.rows.append(Row(f"batch_process, 8 compatible items {self.size}x{self.size}, {self.steps} steps (median of {self.repeats})",
                             f"{b:.2f} s", f"{s:.2f} s (8 text2img one by one)", f"info (is {b / s:.2f})", None))
        if calls != {1}:
            self.notes.append(f"(f): the batch ran in {sorted(c for c in calls if c is not None)} pipeline call(s), not 1.")

    # ---- (g) validate_request latency ---------------------------------------------------------------------

    def measure_validate(self, worker: Child) -> None:
        log(f"(g) inference.validate_request, {self.n_validate} requests one after another")
        variants = [
            self.gen(),  # valid
            self.gen(hires={"scale": 2}, precision={"dtype": "fp32", "vae_tiling": True}),  # valid, the new checks
            self.gen(width=100000, steps=0),  # invalid fields
            self.gen(model_id="no-such-model"),  # unknown model: a catalog rescan
        ]
        rtts = []
        for i in range(self.n_validate):
            w = worker.request({"type": "inference.validate_request", "request_id": f"v{i}", "data": variants[i % len(variants)]}, MEASURE_TIMEOUT)
            rtts.append(w.rtt)
        p50, p99 = pct(rtts, 50), pct(rtts, 99)
        self.rows.append(Row(f"validate_request round trip, p50 (n={len(rtts)})", f"{p50 * 1e3:.1f} ms", "-", "info", None))
        self.rows.append(Row(f"validate_request round trip, p99 (max {max(rtts) * 1e3:.1f} ms)", f"{p99 * 1e3:.1f} ms", "-", "< 50 ms", p99 < 0.050))
        log(f"  p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {max(rtts) * 1e3:.1f} ms")

    # ---- report ----------------------------------------------------------------------------------------------

    def section(self) -> str:
        head = ["measurement", "sdworker", "baseline", "ratio / target", "pass?"]
        table = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows:
            ok = "-" if r.ok is None else ("yes" if r.ok else "**NO**")
            table.append(f"| {r.name} | {r.worker} | {r.baseline} | {r.target} | {ok} |")
        s = self.size
        parts = [
            SECTION3,
            "",
            "Measured by `python bench/run.py --section modes` on the same tiny random-weight SDXL, "
            f"{s}x{s}, {self.steps} steps, in one worker process (`--device cpu`).",
            "",
            self.b.machine(),
            "",
            "\n".join(table),
            "",
            "How each row is taken:",
            "- mode switch: each job's overhead is `total_ms - queue_ms - inference_ms - encode_ms - postprocess_ms` "
            "from its `performance` (loading from the cache, the mode's pipeline, the scheduler, the prompt). After "
            "two warm-up text2img jobs, the first img2img and the first inpainting job (which build their "
            "`from_pipe` pipelines over the loaded components; the very first one also pays diffusers' one-time "
            "import of its auto-pipeline tables) are compared with the median of 5 same-mode jobs; "
            f"then {self.rounds} cycles text2img -> img2img -> inpainting, each job against its mode's same-mode "
            "median; then `model.unload_model` (`keep_in_ram`), one text2img (the pipeline is rebuilt from the RAM "
            "cache) and the first img2img and inpainting jobs of that rebuilt model. RSS: the worker process's "
            "resident set (psutil) before the first switches, after them, and after the same-mode jobs and the cycles.",
            "- batch: one `inference.batch_process` with 8 items of one model, size and step count (different "
            "prompts and seeds; `batch_size` 8, dynamic sizing off: one pipeline call) vs the same 8 sent as "
            "`inference.text2img` one after another, each waited for; wall time write -> last response. "
            "Pairs alternate their order.",
            f"- validate_request: {self.n_validate} requests one after another, write -> response, cycling over a "
            "valid request, a valid one with `hires` and `precision`, one with out-of-range fields and one naming "
            "an unknown model (a catalog rescan each time).",
        ]
        if self.notes:
            parts += ["", "Notes from this run:"] + [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"


INTRO = """# Benchmarks

Figures of the sdworker process against plain baselines on the same machine. Rerun with

    python bench/run.py --write docs/benchmarks.md

(`--quick` for a fast smoke run; `--threads N` to pick the torch thread count of both sides).
Each section is written by its own benchmark and can be replaced on its own.
"""


def doc_section(heading: str, measured_by: str, rows: list[tuple[str, ...]], how: str, started: dt.datetime, device: str = "no GPU (`--device cpu`)") -> str:
    """A benchmarks.md section: heading, what was measured, the machine, the table, how it was measured."""
    import diffusers
    import torch

    head = ["measurement", "sdworker", "baseline", "ratio / target", "pass?"]
    table = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([
        heading,
        "",
        measured_by,
        "",
        f"- machine: {os.cpu_count()} logical CPU cores, {device}; Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        *table,
        "",
        how,
    ]) + "\n"


def publish(section: str, write_to: str | None, heading: str) -> None:
    """Print a section, and with --write put it into that markdown file."""
    print(section)
    if write_to:
        write_doc(Path(write_to), section, heading)


def write_doc(path: Path, section: str, heading: str = SECTION) -> None:
    """Replace the section under `heading` in place (or add it), leaving any other sections as they are."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(INTRO + "\n" + section)
        return
    text = path.read_text()
    start = text.find(heading)
    if start < 0:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    nxt = text.find("\n## ", start + len(heading))
    rest = text[nxt + 1:] if nxt >= 0 else ""
    path.write_text(text[:start] + section + ("\n" + rest if rest else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small N, sizes and repeats: a smoke run")
    p.add_argument("--write", metavar="PATH", help="write the measured sections of this markdown file (e.g. docs/benchmarks.md)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for both sides (default: all cores)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (model, child stderr logs)")
    p.add_argument("--section", choices=("core", "modes", "issue3", "all"), default="core",
                   help="core: (a)-(d); modes: mode switches, batch_process, validate_request (e)-(g); all: both "
                   "(issue3: the old name of modes)")
    args = p.parse_args(argv)
    if args.section == "issue3":
        args.section = "modes"
    bench = Bench(args)
    issue3 = Issue3(bench) if args.section in ("modes", "all") else None
    t0 = time.perf_counter()
    stage: Bench | Issue3 = bench  # where an abort is noted
    try:
        if args.section in ("core", "all"):
            bench.run()
        if issue3 is not None:
            stage = issue3
            if args.section == "modes":
                bench.build_model()
            issue3.run()
    except Exception as exc:
        log(f"aborted: {type(exc).__name__}: {exc}")
        stage.notes.append(f"run aborted: {type(exc).__name__}: {exc}")
    finally:
        bench.cleanup()
    written = []
    if args.section in ("core", "all"):
        written.append((bench.section(), SECTION, bench.rows))
    if issue3 is not None:
        written.append((issue3.section(), SECTION3, issue3.rows))
    for section, heading, _rows in written:
        print(section)
        if args.write:
            write_doc(Path(args.write), section, heading)
            log(f"wrote {heading!r} to {args.write}")
    log(f"done in {time.perf_counter() - t0:.0f}s")
    return 0 if all(rows and all(r.ok is not False for r in rows) for _s, _h, rows in written) else 1


if __name__ == "__main__":
    sys.exit(main())
