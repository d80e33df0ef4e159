#!/usr/bin/env python
"""Cluster mode on this machine: jobs/s with 1 and 2 replicas, and the front's added latency per job.

    python bench/cluster.py [--jobs 16] [--steps 8] [--repeats 15] [--write docs/benchmarks.md]

In one run: a plain worker, `sdworker --ray-address local --replicas 1` and `--replicas 2` (a
private Ray cluster each, one CPU per replica), side by side, over one tiny SD 1.5 (random
weights, 64x64). Throughput: the same N text2img jobs sent at once, first write to last answer,
models warm, the three taking turns for a few rounds (medians).
Latency: jobs of one step sent one at a time; each job's overhead is its round trip less the
worker's own `performance.total_ms`, so the difference between the front (one replica) and the
plain worker is what the front, Ray and the extra pipe add to a job, whatever the job costs.
It is a script, not a test: it only prints (and with --write, writes) the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as core

SECTION = "## Cluster mode: jobs per second and the front's latency"
ROOT = Path(__file__).resolve().parents[1]


def job(rid: str, steps: int, seed: int) -> dict[str, Any]:
    data = {"model_id": "tiny-sd15", "prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": steps, "seed": seed}
    return {"type": "inference.text2img", "request_id": rid, "data": data}


def spawn(args: list[str], tmp: Path, name: str) -> core.Child:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray on the loopback only
    child = core.Child([sys.executable, "-m", "sdworker", "--models-dir", str(tmp / "models"), *args], env, tmp / f"{name}.log")
    child.wait_ready(600)
    return child


def wait_replicas(child: core.Child, n: int) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        w = child.request({"type": "system.get_info", "request_id": f"info-{time.monotonic_ns()}", "data": {}}, 60)
        if sum(r["up"] for r in w.msg["data"]["replicas"]) >= n:  # type: ignore[index]
            return
        time.sleep(0.5)
    raise core.BenchTimeout(f"{n} replicas not up")


def throughput(child: core.Child | list[core.Child], n: int, steps: int, tag: str) -> float:
    """Jobs per second for n jobs sent at once (to several children: dealt in turn)."""
    children = child if isinstance(child, list) else [child]
    waiters = []
    t0 = time.perf_counter()
    for i in range(n):
        waiters.append(children[i % len(children)].send(job(f"{tag}-{i}", steps, i)))
    for w in waiters:
        if not w.event.wait(900) or not (w.msg or {}).get("success"):
            raise RuntimeError(f"{tag}: a job failed: {w.msg}")
    return n / (max(w.t_recv for w in waiters) - t0)


def overheads(children: dict[str, core.Child], repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per child: (round trips, round trip less the worker's own total_ms), ms, of one-step jobs sent
    one at a time, the children taking turns so that both see the same machine load."""
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in children}
    for i in range(repeats):
        for name, child in children.items():
            w = child.request(job(f"lat-{name}-{i}", 1, 1000 + i), 300)
            rt = (w.t_recv - w.t_sent) * 1000
            out[name][0].append(rt)
            out[name][1].append(rt - float(w.msg["data"]["performance"]["total_ms"]))  # type: ignore[index]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=16, help="jobs per throughput round (default 16)")
    p.add_argument("--steps", type=int, default=8, help="steps per throughput job (default 8)")
    p.add_argument("--repeats", type=int, default=15, help="one-step jobs for the latency figures (default 15)")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds of each of the three (default 3; medians)")
    p.add_argument("--write", metavar="PATH", help="write the section into this markdown file (e.g. docs/benchmarks.md)")
    args = p.parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="sdworker-bench-cluster-"))
    from sdworker.tiny import make_tiny_model

    make_tiny_model("sd15", tmp / "models" / "tiny-sd15")
    res: dict[str, Any] = {}
    fronts: list[core.Child] = []
    try:
        core.log("plain worker")
        w = spawn(["--device", "cpu"], tmp, "worker")
        res["worker_ready"] = w.first_at - w.t_spawn  # type: ignore[operator]
        throughput(w, 2, args.steps, "warm")
        w2 = spawn(["--device", "cpu"], tmp, "worker2")  # the hand-made alternative: two workers, jobs dealt by the host
        throughput(w2, 2, args.steps, "warm")
        for n in (1, 2):
            core.log(f"front, {n} replica(s)")
            f = spawn(["--ray-address", "local", "--replicas", str(n), "--replica-cpus", "1"], tmp, f"front{n}")
            fronts.append(f)
            res[f"ready{n}"] = f.first_at - f.t_spawn  # type: ignore[operator]
            wait_replicas(f, n)
            for r in range(2):  # every replica loads the model
                throughput(f, 2 * n, 1, f"warm{n}-{r}")
        core.log("latency")
        lat = overheads({"worker": w, "front": fronts[0]}, args.repeats)
        res["worker_rt"], res["worker_extra"] = lat["worker"]
        res["front_rt"], res["front_extra"] = lat["front"]
        runs: dict[str, list[float]] = {"worker": [], "1": [], "workers2": [], "2": []}
        for r in range(args.rounds):  # they take turns, so a change in the machine's load hits all
            core.log(f"throughput round {r + 1}/{args.rounds}")
            for name, child in (("worker", w), ("1", fronts[0]), ("workers2", [w, w2]), ("2", fronts[1])):
                runs[name].append(throughput(child, args.jobs, args.steps, f"t{name}-{r}"))
        res["worker_jps"], res["jps1"], res["workers2_jps"], res["jps2"] = (statistics.median(runs[k]) for k in ("worker", "1", "workers2", "2"))
        res["runs"] = runs
        for f in fronts:
            f.close(120)
        w.close(60)
        w2.close(60)
    finally:
        for f in fronts:  # SIGTERM, so a front stops its private Ray cluster (SIGKILL would orphan it)
            if f.proc.poll() is None:
                f.proc.terminate()
                f.proc.wait(120)
        core._kill_children()
        shutil.rmtree(tmp, ignore_errors=True)
    med = statistics.median
    added = med(res["front_rt"]) - med(res["worker_rt"])
    added_extra = med(res["front_extra"]) - med(res["worker_extra"])
    rows = [
        ("spawn -> ready event", f"{res['ready1']:.1f} s (1 replica), {res['ready2']:.1f} s (2)", f"{res['worker_ready']:.2f} s (plain worker)", "info (Ray's start, the replicas' and the first worker's)", "-"),
        (f"jobs/s, one plain worker (1 thread), median of {args.rounds}", f"{res['worker_jps']:.2f}", "-", "info", "-"),
        ("jobs/s, front + 1 replica", f"{res['jps1']:.2f}", f"{res['worker_jps']:.2f} (plain worker)", f"info ({res['jps1'] / res['worker_jps']:.2f}x)", "-"),
        ("jobs/s, front + 2 replicas", f"{res['jps2']:.2f}", f"{res['jps1']:.2f} (1 replica)", f"info ({res['jps2'] / res['jps1']:.2f}x)", "-"),
        ("jobs/s, two plain workers, jobs dealt by the client", f"{res['workers2_jps']:.2f}", f"{res['jps2']:.2f} (front + 2 replicas)",
         f"info (the front reaches {res['jps2'] / res['workers2_jps']:.2f} of it)", "-"),
        (f"one-step job round trip, median of {args.repeats}", f"{med(res['front_rt']):.1f} ms", f"{med(res['worker_rt']):.1f} ms (plain worker)", f"info (+{added:.1f} ms)", "-"),
        ("  of which outside the worker's total_ms (median)", f"{med(res['front_extra']):.1f} ms", f"{med(res['worker_extra']):.1f} ms", f"< 50 ms added (is {added_extra:.1f} ms)", "yes" if added_extra < 50 else "no"),
    ]
    how = "\n".join([
        "How each row is taken:",
        "- jobs/s per round (worker / 1 replica / 2 workers / 2 replicas): " + "; ".join(
            " / ".join(f"{v:.2f}" for v in vals) for vals in zip(*(res["runs"][k] for k in ("worker", "1", "workers2", "2")))) + ".",
        f"- jobs/s: {args.jobs} text2img jobs (tiny SD 1.5, 64x64, {args.steps} steps, distinct seeds) written back to back; N / (first write -> last answer). "
        "Every replica has the model loaded first (warm-up rounds); the plain workers and both fronts run side by side and take turns, round by round. A front starts a private Ray cluster (`--ray-address local`, "
        "one CPU per replica); all processes run with one torch thread (`OMP_NUM_THREADS=1`), so 2 replicas can use both cores.",
        "- spawn -> ready: `Popen` to the first stdout line; the front writes it when its first replica's worker is up.",
        "- latency: one-step jobs, one at a time, the plain worker and the front (1 replica) taking turns; round trip = write -> answer read. \"Outside total_ms\" subtracts the worker's own "
        "`performance.total_ms` (queue, load, inference, encode), leaving the pipes, decoding and, for the front, Ray's calls to the "
        "replica and its long poll; the difference between the two columns is the front's added latency per job.",
        f"- load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}: this machine is shared, so the figures move with it.",
    ])
    if res["workers2_jps"] < 1.2 * res["worker_jps"]:
        how += ("\n- Reading: in this run a second process got no second core (two plain workers fed by hand were not faster than one), "
                "so the 2-replica row is to be read against the two-workers row, not as the speed-up free cores or GPUs give.")
    section = core.doc_section(SECTION, "Measured by `python bench/cluster.py` on this machine (2 CPU cores): one plain worker against the cluster front.", rows, how, started)
    core.publish(section, args.write, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
