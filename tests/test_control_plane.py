"""The control plane never waits: the stdin reader only parses and validates; loads, disk work and
job planning run on the worker lane, so a ping sent behind them is answered first.

No timing is asserted, only the order of the answers on stdout; where a slow call must stay slow
until the ping is answered, the test holds what it waits for (the database's write lock).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

from conftest import Worker, png_b64

JOB = {"model_id": "tiny-sd15", "prompt": "lane", "width": 64, "height": 64, "steps": 2, "seed": 5, "strength": 0.5}


def _index(w: Worker, pred: Callable[[dict[str, Any]], bool]) -> int:
    """Where on stdout the first message matching `pred` came (every line is kept in w.raw, in order)."""
    import orjson

    for i, line in enumerate(w.raw):
        msg = orjson.loads(line)
        if isinstance(msg, dict) and pred(msg):
            return i
    raise AssertionError("no such message")


def _answer(rid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("type") == "response" and m.get("request_id") == rid


def _noise_png(side: int) -> str:
    """A PNG that takes real work to decode (noise does not compress)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return png_b64(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))


def test_ping_is_answered_while_a_write_waits_for_the_database(spawn, tmp_path: Path) -> None:
    w = spawn()
    assert w.call("config.list")["success"]  # the worker has opened sdworker.db
    db = sqlite3.connect(tmp_path / "data" / "sdworker.db", isolation_level=None, timeout=30)
    db.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the worker's write waits for it
    try:
        w.send({"type": "config.create", "request_id": "slow", "data": {"model_id": "m", "base_model": "sdxl", "configuration_type": "speed", "steps": 4, "cfg_scale": 1}})
        w.send({"type": "system.ping", "request_id": "p1"})
        w.send({"type": "inference.get_status", "request_id": "p2"})
        assert w.response("p1")["success"] and w.response("p2")["success"]
        assert not any(_answer("slow")(m) for m in w.pending if isinstance(m, dict))  # still waiting: we hold the lock
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert w.response("slow")["success"]
    assert _index(w, _answer("p1")) < _index(w, _answer("slow"))


class _HeldDatabase:
    """Holds sdworker.db's write lock (as another process could), so a `config.create` sent now waits on
    the worker lane, and every call queued behind it there waits too, for as long as the test holds it."""

    def __init__(self, w: Worker, data_dir: Path):
        assert w.call("config.list")["success"]  # the worker has opened sdworker.db
        self.w = w
        self.db = sqlite3.connect(data_dir / "sdworker.db", isolation_level=None, timeout=30)

    def __enter__(self) -> "_HeldDatabase":
        self.db.execute("BEGIN IMMEDIATE")
        self.w.send({"type": "config.create", "request_id": "held", "data": {"model_id": "m", "base_model": "sdxl", "configuration_type": "speed", "steps": 4, "cfg_scale": 1}})
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.execute("ROLLBACK")
        self.db.close()
        assert self.w.response("held")["success"]


def _said(w: Worker, rid: str) -> bool:
    return any(isinstance(m, dict) and m.get("request_id") == rid for m in w.pending)


def test_ping_is_answered_while_a_job_waits_to_be_planned(spawn, tmp_path: Path) -> None:
    """Job planning (decoding the init image, resolving the model) is lane work: a ping sent behind a
    job that cannot be planned yet is answered at once, before the job says anything."""
    w = spawn()
    with _HeldDatabase(w, tmp_path / "data"):
        w.send({"type": "inference.img2img", "request_id": "big", "data": {**JOB, "init_image": _noise_png(256)}})
        w.send({"type": "system.ping", "request_id": "p"})
        assert w.response("p")["success"]
        assert not _said(w, "big")  # still behind the held write on the lane
    assert w.response("big", timeout=300)["success"]
    assert _index(w, _answer("p")) < _index(w, lambda m: m.get("request_id") == "big")


def test_status_and_cancel_of_a_job_being_planned_see_it_queued(spawn, tmp_path: Path) -> None:
    """A call naming a job that is still being planned waits for that plan: it never says 'unknown session'."""
    w = spawn("--max-steps", "1000")
    endless = {"model_id": "tiny-sdxl", "prompt": "long", "width": 64, "height": 64, "steps": 1000, "seed": 1}
    w.send({"type": "inference.text2img", "request_id": "run", "data": endless})  # runs until cancelled
    w.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "run", timeout=120)
    with _HeldDatabase(w, tmp_path / "data"):
        w.send({"type": "inference.img2img", "request_id": "planned", "data": {**JOB, "init_image": _noise_png(64)}})
        w.send({"type": "inference.get_session_status", "request_id": "st", "data": {"session_id": "planned"}})
        w.send({"type": "inference.cancel_session", "request_id": "cx", "data": {"session_id": "planned"}})
        w.send({"type": "system.ping", "request_id": "p"})
        assert w.response("p")["success"]
        assert not _said(w, "st") and not _said(w, "cx")  # they wait for the plan, which waits for the lane
    st = w.response("st")
    assert st["success"] and st["data"]["status"] == "queued", st
    cx = w.response("cx")
    assert cx["success"] and cx["data"]["action"] == "dropped", cx
    assert w.response("planned")["error_code"] == "cancelled"
    w.call("inference.cancel_session", {"session_id": "run"})
    assert w.response("run", timeout=120)["error_code"] == "cancelled"


def test_the_lane_keeps_the_order_sent(spawn) -> None:
    """Calls on the worker lane run in arrival order: a preset created before a resolve is found by it."""
    w = spawn()
    w.send({"type": "config.create", "request_id": "c", "data": {"model_id": "tiny-sd15", "configuration_type": "speed", "steps": 3, "cfg_scale": 4.0}})
    w.send({"type": "config.resolve", "request_id": "r", "data": {"model_id": "tiny-sd15", "configuration_type": "speed"}})
    made, resolved = w.response("c"), w.response("r")
    assert made["success"] and resolved["success"], (made, resolved)
    assert resolved["data"]["origin"] == "model" and resolved["data"]["steps"] == 3
    assert _index(w, _answer("c")) < _index(w, _answer("r"))


def test_config_import_of_a_fifo_is_refused_at_once(spawn, tmp_path: Path) -> None:
    """A FIFO would block the worker lane forever (every later model.* and config.* call with it)."""
    import os

    w = spawn()
    fifo = tmp_path / "out" / "presets.jsonl"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    r = w.call("config.import", {"path": str(fifo)})
    assert r["error_code"] == "validation_error" and "not a regular file" in r["error"], r
    assert w.call("config.list")["success"]  # the lane is free
