"""Cluster mode: a front driven like a host, over a two-node Ray cluster made here (CPU, tiny models).

The cluster (two nodes, the head and one more, with one CPU each, so each node hosts exactly one
replica) and the front are shared by the module, and the tests run in file order (the last one
stops the front). Every Ray address is on the loopback. Images are compared, pixel for pixel,
with those of one plain worker given the same requests (sent to it at the start, so it works
while the cluster does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Worker, decode_png
from sdworker.cluster.router import ReplicaState, Router
from sdworker.cluster.spread import split

MODELS = ("tiny-sd15", "tiny-sdxl")


# ---- routing rules, without Ray ------------------------------------------------------------------


def _router(n: int = 2) -> Router:
    return Router([ReplicaState(id=i, up=True, token="t") for i in range(n)])


def test_router_affinity_then_least_loaded() -> None:
    r = _router()
    r.replicas[1].models.add("b")
    assert r.prefer("b") == 1  # a holder
    assert r.prefer("a") == 0  # none holds it: the least loaded, fewer models first
    r.replicas[1].running.append(object())
    assert r.add("x", "b", 0).preferred == 1  # one job busier: the holder still
    assert r.prefer("b") == 0  # the holder is SPILL jobs busier than replica 0


def test_router_priority_across_the_cluster() -> None:
    r = _router()
    r.replicas[0].models.add("a")
    r.replicas[1].running.append(object())  # busy
    r.add("low", "a", 0)
    r.add("high", "b", 5)  # prefers the idle replica 0 (no holder), and outranks "low"
    (q, rep), = r.assign()
    assert (q.job, rep.id) == ("high", 0)


def test_router_free_replica_takes_its_own_model_first() -> None:
    r = _router()
    r.replicas[0].models.add("a")
    r.replicas[1].models.add("b")
    for name, model in (("a1", "a"), ("b1", "b"), ("a2", "a")):
        r.add(name, model, 0)
    pairs = {rep.id: q.job for q, rep in r.assign()}
    assert pairs == {0: "a1", 1: "b1"}


def test_batch_split_keeps_groups_and_order() -> None:
    items = [{"model_id": m, "width": 64} for m in ("a", "b", "a", "b", "a")]
    parts = split(items, 2)
    assert sorted(i for p in parts for i in p) == list(range(5))
    assert {tuple(p) for p in parts} == {(0, 2, 4), (1, 3)}
    same = split([{"model_id": "a"}] * 4, 2)  # one group, split so both replicas work
    assert [len(p) for p in same] == [2, 2]


# ---- a real cluster ----------------------------------------------------------------------------------

class Front(Worker):
    """The front as a host spawns it; its ready waits for Ray and a replica, so it may take a while."""

    def wait_for(self, pred: Any, timeout: float = 60) -> Any:
        return super().wait_for(pred, timeout if hasattr(self, "ready") else 300)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    pytest.importorskip("ray", reason="cluster mode needs the 'cluster' extra (ray)")
    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray binds 127.0.0.1, not the machine's address
    from ray.cluster_utils import Cluster

    store = 80 * 2**20  # the smallest object store Ray takes; results are small
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}, "object_store_memory": store})
    c.add_node(num_cpus=1, resources={"node_b": 1}, object_store_memory=store)
    c.wait_for_nodes()
    yield c
    c.shutdown()
    if before is None:
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    else:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = before


@pytest.fixture(scope="module")
def cmodels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import tiny_models_dir

    return tiny_models_dir(tmp_path_factory, "cluster", {"tiny-sd15": "sd15", "tiny-sdxl": "sdxl"})


@pytest.fixture(scope="module")
def front(cluster: Any, cmodels: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    f = Front([
        "--ray-address", cluster.address, "--replicas", "2", "--replica-cpus", "1",
        "--models-dir", str(cmodels), "--output-dir", str(tmp_path_factory.mktemp("cl-out")),
        "--data-dir", str(tmp_path_factory.mktemp("cl-data")),
    ])
    _wait_replicas(f, 2)
    yield f
    if f.proc.poll() is None:
        f.proc.kill()
        f.proc.wait(30)


MANY = {f"many-{i}": {"model_id": MODELS[i % 2], "prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 7 + i} for i in range(12)}


@pytest.fixture(scope="module")
def single(cmodels: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One plain worker with the replicas' thread count (Ray gives a 1-CPU actor OMP_NUM_THREADS=1),
    sent the MANY requests at once; the test that compares reads its answers."""
    w = Worker(["--models-dir", str(cmodels), "--output-dir", str(tmp_path_factory.mktemp("single-out"))], env={"OMP_NUM_THREADS": "1"})
    for rid, data in MANY.items():
        w.send({"type": "inference.text2img", "request_id": rid, "data": data})
    yield w
    w.proc.kill()
    w.proc.wait(30)


def _info(f: Front) -> dict[str, Any]:
    return f.call("system.get_info")["data"]


def _wait_replicas(f: Front, n: int, timeout: float = 240) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        reps = _info(f)["replicas"]
        if sum(r["up"] for r in reps) >= n:
            return reps
        assert time.monotonic() < deadline, f"replicas not up: {reps}"
        time.sleep(0.5)


def _job(model: str, seed: int, steps: int = 2, **extra: Any) -> dict[str, Any]:
    return {"model_id": model, "prompt": "a red cube", "width": 64, "height": 64, "steps": steps, "seed": seed, **extra}


def _answers(f: Front, rid: str) -> int:
    """How many response lines carried this request id (never more than one)."""
    import orjson

    return sum(1 for raw in f.raw if b'"response"' in raw and orjson.loads(raw).get("request_id") == rid)


def test_affinity_keeps_each_model_on_its_replica(front: Front, single: Worker) -> None:
    assert front.call("model.clear_cache")["success"]  # every replica; the front forgets who holds what
    placed: dict[str, set[int]] = {m: set() for m in MODELS}
    for round_ in range(3):  # both replicas idle at each round: each model goes where it is held
        for model in MODELS:
            front.send({"type": "inference.text2img", "request_id": f"aff-{round_}-{model}", "data": _job(model, 100 + round_)})
        for model in MODELS:
            r = front.response(f"aff-{round_}-{model}", timeout=240)
            assert r["success"], r
            placed[model].add(r["data"]["replica"]["id"])
    assert all(len(ids) == 1 for ids in placed.values()), placed
    assert placed["tiny-sd15"] != placed["tiny-sdxl"], placed


def test_twelve_jobs_answered_once_and_equal_to_one_worker(front: Front, single: Worker) -> None:
    reqs = MANY
    for rid, data in reqs.items():
        front.send({"type": "inference.text2img", "request_id": rid, "data": data})
    got = {rid: front.response(rid, timeout=300) for rid in reqs}
    for rid in reqs:
        ref = single.response(rid, timeout=240)
        assert got[rid]["success"] and ref["success"], (got[rid], ref)
        a, b = decode_png(got[rid]["data"]["images"][0]["base64"]), decode_png(ref["data"]["images"][0]["base64"])
        assert (a == b).all(), f"{rid}: cluster image differs from the single worker's"
    front.drain(0.5)
    assert all(_answers(front, rid) == 1 for rid in reqs)
    nodes = {g["data"]["replica"]["node"] for g in got.values()}
    assert len(nodes) == 2, nodes  # both nodes ran jobs
    reps = {r["id"]: r for r in _info(front)["replicas"]}
    for g in got.values():
        rep = g["data"]["replica"]
        assert rep["node"] == reps[rep["id"]]["node"] and rep["device"] == "cpu"


def test_views_cover_every_replica(front: Front) -> None:
    caps = front.call("inference.get_capabilities", timeout=60)["data"]
    assert caps["max_concurrent"] == 2
    assert len({d["node"] for d in caps["devices"]}) == 2
    cache = front.call("model.get_cache_status")["data"]
    assert {e["replica"]["id"] for e in cache["entries"]} == {0, 1}
    assert all(e["node"] == e["replica"]["node"] for e in cache["entries"])
    vram = front.call("model.get_vram_model_status")["data"]
    assert vram["cuda_available"] is False


def _running(f: Front, sid: str, timeout: float = 120) -> None:
    f.wait_for(lambda m: isinstance(m, dict) and m.get("event") == "progress" and m.get("session_id") == sid, timeout)


def test_cancel_reaches_the_owner_and_the_front_queue(front: Front) -> None:
    long = {"width": 128, "height": 128, "steps": 150}  # cancelled long before its end
    for i, model in enumerate(MODELS):
        front.send({"type": "inference.text2img", "request_id": f"long-{i}", "data": _job(model, 1, **long)})
    front.send({"type": "inference.text2img", "request_id": "waits", "data": _job(MODELS[0], 2)})
    _running(front, "long-0")
    _running(front, "long-1")
    active = front.call("inference.get_active_sessions")["data"]["sessions"]
    rows = {s["session_id"]: s for s in active}
    assert rows["waits"]["status"] == "queued" and rows["waits"]["replica"] is None
    assert rows["long-0"]["replica"]["node"] != rows["long-1"]["replica"]["node"]
    status = front.call("inference.get_session_status", {"session_id": "long-0", "include_logs": True})["data"]
    assert status["status"] == "running" and status["replica"] == rows["long-0"]["replica"]  # the owner answered
    dropped = front.call("inference.cancel_session", {"session_id": "waits"})["data"]
    assert dropped["action"] == "dropped"
    assert front.response("waits")["error_code"] == "cancelled"
    for i in range(2):
        c = front.call("inference.cancel_session", {"session_id": f"long-{i}"})["data"]
        assert c["action"] == "stopping" and c["replica"] == rows[f"long-{i}"]["replica"]
        assert front.response(f"long-{i}", timeout=120)["error_code"] == "cancelled"


def test_presets_live_at_the_front(front: Front) -> None:
    made = front.call("config.create", {"model_id": "tiny-sd15", "configuration_type": "speed", "steps": 3, "cfg_scale": 4.0, "sampler": "euler", "scheduler": "normal"})
    assert made["success"], made
    job = {k: v for k, v in _job("tiny-sd15", 5).items() if k != "steps"}  # the preset's steps apply
    r = front.call("inference.text2img", {**job, "preset": "speed"}, timeout=120)
    assert r["success"], r
    params = r["data"]["parameters"]
    assert params["preset_origin"] == "model" and params["preset_id"] == made["data"]["id"] and params["steps"] == 3
    listed = front.call("config.list", {"model_id": "tiny-sd15"})["data"]
    assert [p["id"] for p in listed["items"]] == [made["data"]["id"]]


def test_jsonrpc_legacy_and_spread_batch(front: Front) -> None:
    front.send({"jsonrpc": "2.0", "id": 41, "method": "inference.text2img", "params": _job("tiny-sd15", 9)})
    res = front.wait_for(lambda m: isinstance(m, dict) and m.get("id") == 41 and "result" in m, 120)
    assert res["result"]["replica"]["device"] == "cpu"
    front.send({"action": "execute_inference", "session_id": "legacy-1", "model_id": "tiny-sdxl", "prompt": "x", "parameters": {"width": 64, "height": 64, "steps": 2, "seed": 3}, "inference_type": "TextToImage"})
    leg = front.wait_for(lambda m: isinstance(m, dict) and m.get("session_id") == "legacy-1" and "success" in m, 120)
    assert leg["success"] and leg["status"] == "completed" and "replica" in leg["results"]
    items = [_job(MODELS[i % 2], 20 + i) for i in range(4)]
    b = front.call("inference.batch_process", {"requests": items}, timeout=300)
    assert b["success"], b
    assert [it["index"] for it in b["data"]["items"]] == [0, 1, 2, 3] and all(it["success"] for it in b["data"]["items"])
    assert len({it["replica"]["id"] for it in b["data"]["items"]}) == 2  # spread over both replicas


def test_lost_replica_answers_worker_lost_or_retries(front: Front) -> None:
    reps = {r["id"]: r for r in _wait_replicas(front, 2)}
    front.send({"type": "inference.text2img", "request_id": "doomed", "data": _job(MODELS[0], 1, width=128, height=128, steps=150)})
    _running(front, "doomed")
    owner = front.call("inference.get_session_status", {"session_id": "doomed"})["data"]["replica"]["id"]
    os.kill(reps[owner]["pid"], signal.SIGKILL)  # the replica's actor process (its worker child dies with it)
    lost = front.response("doomed", timeout=120)
    assert lost["error_code"] == "worker_lost" and lost["data"]["replica"]["id"] == owner

    reps = {r["id"]: r for r in _wait_replicas(front, 2)}  # Ray restarted it
    assert reps[owner]["restarts"] >= 1
    front.send({"type": "inference.text2img", "request_id": "again", "retry": True, "data": _job(MODELS[1], 4, steps=150)})  # many cheap steps: killed mid-run, then run in full
    _running(front, "again")
    first = front.call("inference.get_session_status", {"session_id": "again"})["data"]["replica"]["id"]
    os.kill(reps[first]["child_pid"], signal.SIGKILL)  # a crash of the worker process itself (CUDA abort, ...)
    retried = front.response("again", timeout=240)
    assert retried["success"], retried
    assert retried["data"]["replica"]["id"] != first  # run once more on the other replica
    for rid in ("next-0", "next-1"):
        front.send({"type": "inference.text2img", "request_id": rid, "data": _job(MODELS[0], 8)})
    assert all(front.response(rid, timeout=240)["success"] for rid in ("next-0", "next-1"))
    front.drain(0.5)
    assert all(_answers(front, rid) == 1 for rid in ("doomed", "again", "next-0", "next-1"))


def test_sigterm_stops_front_and_replicas(front: Front) -> None:
    children = [r["child_pid"] for r in _info(front)["replicas"]]
    front.proc.send_signal(signal.SIGTERM)
    assert front.proc.wait(120) == 0
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in children)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_without_ray_one_line_and_exit_2() -> None:
    code = "import sys; sys.modules['ray'] = None; from sdworker.__main__ import main; main(['--ray-address', 'local'])"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 2 and p.stdout == b""
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "cluster" in lines[0], lines


def test_front_imports_no_ml() -> None:
    """The front runs the worker only as the replicas' child: it never imports torch, diffusers or the ML layers."""
    code = (
        "import sys, sdworker.cluster.front, sdworker.cluster.replica; "
        "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers') or m.startswith(('sdworker.managers', 'sdworker.families'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=True).stdout.decode().strip()
    assert out == "[]", out
