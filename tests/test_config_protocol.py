"""config.* and `preset` through the real worker process, as a host drives them."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from sdworker.managers import schedulers
from sdworker.store import builtin_presets as bp

FLUX_LINE = (
    '{"_id":{"$oid":"65f1c2a9e4b0a1b2c3d4e5f7"},"id":"1c7f7f4e-7e1b-4d55-8b66-2c3e3e4d5f60","model_id":"flux1-dev",'
    '"base_model":"flux_dev","configuration_type":"speed","steps":{"$numberInt":"20"},"cfg_scale":{"$numberDouble":"1.0"},'
    '"sampler":"euler","scheduler":"simple","model_specific_params":{"guidance":3.5,"width":1024,"height":1024},'
    '"created_at":{"$date":"2024-03-13T15:04:41.123Z"},"updated_at":{"$date":{"$numberLong":"1710342281123"}},"__v":0}'
)


def ok(r: dict) -> dict:
    assert r["success"] is True, r
    return r["data"]


def fail(r: dict, code: str = "validation_error") -> dict:
    assert r["success"] is False and r["error_code"] == code, r
    return r


def test_crud_conflict_populate_and_resolve(spawn, tmp_path: Path) -> None:
    w = spawn()
    made = ok(w.call("config.create", {"modelId": "tiny-sdxl", "configurationType": "quality", "steps": 28, "cfgScale": 7,
                                       "sampler": "dpmpp_2m", "scheduler": "karras",
                                       "modelSpecificParams": {"width": 1024, "height": 1024, "custom_key": [1]}}))
    assert made["base_model"] == "sdxl" and made["origin"] == "model"  # detected from the models dir
    assert made["model_specific_params"] == {"width": 1024, "height": 1024, "custom_key": [1]}
    assert ok(w.call("config.get", {"id": made["id"]})) == made

    dup = fail(w.call("config.create", {"model_id": "tiny-sdxl", "configuration_type": "quality", "steps": 5, "cfg_scale": 2}))
    assert f"conflicts with preset id {made['id']}" in dup["error"]
    assert dup["error_details"][0]["path"] == "data.configuration_type"

    upd = ok(w.call("config.update", {"id": made["id"], "steps": 30, "scheduler": None}))
    assert (upd["steps"], upd["scheduler"], upd["sampler"]) == (30, None, "dpmpp_2m") and upd["updated_at"] >= made["updated_at"]
    bad = fail(w.call("config.update", {"id": made["id"], "steps": None}))
    assert "cannot be null" in bad["error"]
    assert "multiple of 8" in fail(w.call("config.create", {"model_id": "x", "base_model": "sdxl", "configuration_type": "speed",
                                                            "steps": 4, "cfg_scale": 1, "model_specific_params": {"width": 100}}))["error"]
    unknown_model = fail(w.call("config.create", {"model_id": "nope", "configuration_type": "speed", "steps": 4, "cfg_scale": 1}), "model_not_found")
    assert "send base_model" in unknown_model["error"]

    listed = ok(w.call("config.list", {"model_id": "tiny-sdxl"}))
    assert [p["id"] for p in listed["items"]] == [made["id"]] and listed["total"] == 1
    with_builtins = ok(w.call("config.list", {"base_model": "sdxl", "include_builtin": True}))
    assert [p["origin"] for p in with_builtins["items"]] == ["model", "builtin", "builtin"]

    # JSON-RPC form too: the same error, as a -32602 with the conflict in its data.
    w.send({"jsonrpc": "2.0", "id": 41, "method": "config.create",
            "params": {"model_id": "tiny-sdxl", "configuration_type": "quality", "steps": 5, "cfg_scale": 2}})
    rpc = w.wait_for(lambda m: isinstance(m, dict) and m.get("id") == 41)
    assert rpc["error"]["code"] == -32602 and made["id"] in rpc["error"]["message"]

    assert ok(w.call("config.delete", {"id": made["id"]})) == {"deleted": True, "id": made["id"]}
    for method in ("config.get", "config.delete", "config.update"):
        gone = fail(w.call(method, {"id": made["id"]}))
        assert made["id"] in gone["error"] and gone["error_details"][0]["path"] == "data.id"
    info = ok(w.call("system.get_info"))
    assert info["settings"]["database"] == str(tmp_path / "data" / "sdworker.db")

    # populate (the same worker, now empty again): twice creates nothing the second time
    assert ok(w.call("config.list"))["total"] == 0
    first = ok(w.call("config.populate"))
    assert (first["created"], first["skipped"]) == (4, 0)
    assert {(m["model_id"], m["base_model"]) for m in first["models"]} == {("tiny-sdxl", "sdxl"), ("tiny-sd15", "sd_1_5")}
    second = ok(w.call("config.populate"))
    assert (second["created"], second["skipped"], second["items"]) == (0, 4, [])
    assert ok(w.call("config.list"))["total"] == 4

    own = ok(w.call("config.resolve", {"model_id": "tiny-sdxl", "configuration_type": "quality"}))
    assert own["origin"] == "model" and own["model_id"] == "tiny-sdxl" and own["steps"] == 30
    ok(w.call("config.delete", {"id": own["id"]}))
    fallback = ok(w.call("config.resolve", {"model_id": "tiny-sdxl", "configuration_type": "quality"}))
    assert fallback["origin"] == "builtin" and fallback["base_model"] == "sdxl"
    assert fallback["id"] == bp.builtin_id("sdxl", "quality") and fallback["source"]
    by_base = ok(w.call("config.resolve", {"base_model": "flux_schnell", "configuration_type": "speed"}))
    assert (by_base["origin"], by_base["steps"], by_base["cfg_scale"]) == ("builtin", 4, 1.0)
    assert "no quality preset" in fail(w.call("config.resolve", {"base_model": "sd_2", "configuration_type": "quality"}))["error"]
    assert fail(w.call("config.resolve", {"configuration_type": "quality"}))["error_details"]
    fail(w.call("config.resolve", {"model_id": "nope", "configuration_type": "quality"}), "model_not_found")
    again = ok(w.call("config.populate", {"model_ids": ["tiny-sdxl"]}))
    assert (again["created"], again["skipped"]) == (1, 1)
    assert w.close() == 0
    w.assert_pure_stdout()


def test_import_of_a_mongoexport_file_round_trips(spawn, tmp_path: Path) -> None:
    w = spawn()
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    sdxl_line = FLUX_LINE.replace("flux1-dev", "tiny-sdxl").replace("flux_dev", "sdxl").replace("65f1c2a9e4b0a1b2c3d4e5f7", "65f1c2a9e4b0a1b2c3d4e5f8") \
        .replace("1c7f7f4e-7e1b-4d55-8b66-2c3e3e4d5f60", "2d8f8f5e-8f2c-4e66-9c77-3d4f4f5e6071")
    (data / "inference_configurations.json").write_text("\ufeff" + FLUX_LINE + "\r\n" + sdxl_line + "\r\n", encoding="utf-8")
    res = ok(w.call("config.import", {"path": "inference_configurations.json"}))
    assert (res["total"], res["imported"]) == (2, 2)
    again = fail(w.call("config.import", {"path": "inference_configurations.json"}))
    assert "conflicts with preset id 1c7f7f4e" in again["error"]
    assert ok(w.call("config.import", {"path": "inference_configurations.json", "on_conflict": "skip"}))["skipped"] == 2
    fail(w.call("config.import", {"path": "/etc/passwd"}), "unsafe_path")

    out = ok(w.call("config.export", {"path": "export.jsonl"}))
    assert out["count"] == 2 and Path(out["path"]) == data / "export.jsonl"
    exported = [json.loads(line) for line in (data / "export.jsonl").read_text().splitlines()]
    assert exported[0]["_id"] == {"$oid": "65f1c2a9e4b0a1b2c3d4e5f7"} and exported[0]["__v"] == 0
    assert exported[0]["steps"] == 20 and exported[0]["created_at"] == {"$date": "2024-03-13T15:04:41.123Z"}
    assert exported[0]["updated_at"] == {"$date": "2024-03-13T15:04:41.123Z"}

    # The export is the collection: emptied, imported from it, exported again: the same bytes.
    text = ok(w.call("config.export"))["jsonl"]
    for item in ok(w.call("config.list"))["items"]:
        ok(w.call("config.delete", {"id": item["id"]}))
    assert ok(w.call("config.import", {"jsonl": text}))["imported"] == 2
    assert ok(w.call("config.export"))["jsonl"] == text
    resolved = ok(w.call("config.resolve", {"model_id": "flux1-dev", "configuration_type": "speed"}))
    assert resolved["origin"] == "model" and resolved["model_specific_params"]["guidance"] == 3.5
    assert w.close() == 0


def test_preset_drives_generation_and_the_request_overrides_it(spawn) -> None:
    w = spawn("--device", "cpu")
    tiny = ok(w.call("config.create", {"model_id": "tiny-sdxl", "configuration_type": "quality", "steps": 2, "cfg_scale": 3.5,
                                       "sampler": "dpmpp_2m", "scheduler": "karras",
                                       "model_specific_params": {"width": 64, "height": 64, "clip_skip": 2}}))
    base = {"model_id": "tiny-sdxl", "prompt": "a fox", "seed": 3, "output": {"return_base64": False}}

    # The model's own preset sets guidance and size; the steps the request sends itself win
    # (under an alias, in the `parameters` bag: whatever the request set counts).
    p = ok(w.call("inference.text2img", {**base, "preset": "Quality", "parameters": {"num_inference_steps": 1}}, timeout=180))["parameters"]
    assert (p["steps"], p["guidance_scale"], p["width"], p["height"]) == (1, 3.5, 64, 64)
    assert (p["preset"], p["preset_origin"], p["preset_id"]) == ("quality", "model", tiny["id"])
    assert p["preset_applied"] == {"guidance_scale": 3.5, "width": 64, "height": 64, "clip_skip": 2}
    assert (p["preset_sampler"], p["preset_scheduler"]) == ("dpmpp_2m", "karras")
    # the preset's sampler + schedule run when the request names neither
    assert (p["scheduler"], p["sampler_name"]) == ("DPMSolverMultistepScheduler", "DPM++ 2M Karras")

    # No speed preset of its own: the base model's built-in (sdxl speed: CFG 5), under the request's size and steps.
    p = ok(w.call("inference.text2img", {**base, "preset": "speed", "steps": 1, "width": 64, "height": 64}))["parameters"]
    speed = bp.builtin("sdxl", "speed")
    assert (p["steps"], p["guidance_scale"], p["width"]) == (1, speed.cfg_scale, 64)
    assert (p["preset_origin"], p["preset_base_model"], p["preset_sampler"]) == ("builtin", "sdxl", speed.sampler)
    assert p["preset_applied"] == {"guidance_scale": speed.cfg_scale, "optimize": speed.model_specific_params["optimize"]}
    assert p["sampler"] == schedulers.resolve(speed.scheduler, speed.sampler).id
    assert p["optimize"]["cache"] == {"kind": "deepcache", "interval": 2, "branch": 0, "start": 2}  # the speed preset's cache ran

    # A preset value the request field rejects is a validation_error before anything is queued.
    ok(w.call("config.update", {"id": tiny["id"], "model_specific_params": {"width": 64, "height": 4096}}))
    bad = fail(w.call("inference.text2img", {**base, "preset": "quality"}))
    assert bad["error_details"][0]["path"] == "data.height" and f"quality preset {tiny['id']}" in bad["error"]

    # Presets are answered while a job runs (WAL readers; the reader thread never waits on the job).
    w.send({"type": "inference.text2img", "request_id": "long", "data": {**base, "steps": 150, "width": 64, "height": 64, "preset": "speed"}})
    w.wait_for(lambda m: m.get("event") == "progress" and m.get("request_id") == "long", timeout=60)
    created = ok(w.call("config.create", {"model_id": "tiny-sd15", "configuration_type": "quality", "steps": 3, "cfg_scale": 5}, timeout=10))
    assert ok(w.call("config.list", {"model_id": "tiny-sd15"}, timeout=10))["items"][0]["id"] == created["id"]
    assert not any(m.get("type") == "response" and m.get("request_id") == "long" for m in w.pending)
    ok(w.call("inference.cancel_session", {"session_id": "long", "force_cancel": True}))
    assert w.response("long")["error_code"] == "cancelled"
    assert w.close() == 0
    w.assert_pure_stdout()


def test_worker_optimize_default_wins_over_a_preset(spawn) -> None:
    """A host that starts the worker with --optimize chose its speed options: the preset's are skipped."""
    w = spawn("--device", "cpu", "--optimize", "none")
    req = {"model_id": "tiny-sdxl", "prompt": "a fox", "seed": 3, "steps": 1, "width": 64, "height": 64, "preset": "speed",
           "output": {"return_base64": False}}
    p = ok(w.call("inference.text2img", req))["parameters"]
    assert p["optimize"]["preset"] == "none" and "optimize" not in p["preset_applied"]
    assert p["preset_skipped"]["optimize"]["cache"]["kind"] == "deepcache"
    p = ok(w.call("inference.text2img", {**req, "optimize": {"cache": "deepcache"}}))["parameters"]  # the request's own wins
    assert p["optimize"]["cache"]["kind"] == "deepcache"
    assert w.close() == 0


def test_without_data_dir_presets_live_in_memory(spawn) -> None:
    worker = spawn("--data-dir", "")  # an empty flag is no data dir (the last --data-dir wins)
    info = ok(worker.call("system.get_info"))
    assert info["settings"]["data_dir"] is None and info["settings"]["database"] == ":memory:"
    made = ok(worker.call("config.create", {"model_id": "mem-model", "base_model": "pony", "configuration_type": "speed", "steps": 9, "cfg_scale": 5}))
    assert ok(worker.call("config.resolve", {"model_id": "mem-model", "configuration_type": "speed"}))["id"] == made["id"]
    assert ok(worker.call("config.resolve", {"model_id": "mem-model", "configuration_type": "quality"}))["base_model"] == "pony"
    ok(worker.call("config.delete", {"id": made["id"]}))
    assert worker.close() == 0


def test_kill_9_mid_writes_then_restart(spawn, tmp_path: Path) -> None:
    w = spawn()

    def send_all() -> None:  # from a thread: the pipe fills up, and the kill must not wait for it
        try:
            for i in range(400):
                w.send({"type": "config.create", "request_id": f"c{i}",
                        "data": {"model_id": f"m{i:04d}", "base_model": "sdxl", "configuration_type": "quality", "steps": 30,
                                 "cfg_scale": 7, "model_specific_params": {"width": 1024, "height": 1024, "pad": "x" * 4000}}})
        except (BrokenPipeError, OSError, ValueError):
            pass

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    acked = [ok(w.response(f"c{i}"))["id"] for i in range(40)]
    w.kill()  # SIGKILL, with writes still in flight
    sender.join(10)

    db = tmp_path / "data" / "sdworker.db"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT id, model_id, model_specific_params FROM inference_configurations").fetchall()
    conn.close()
    assert all(len(json.loads(msp)["pad"]) == 4000 for _, _, msp in rows)  # every row complete
    assert set(acked) <= {r[0] for r in rows}  # every answered create survived

    again = spawn()
    listed = ok(again.call("config.list", {"limit": 10000}))
    assert listed["total"] == len(rows) >= len(acked)
    assert len(rows) < 400  # the kill did land mid-stream
    assert ok(again.call("config.create", {"model_id": "after", "base_model": "sdxl", "configuration_type": "speed", "steps": 9, "cfg_scale": 5}))
    assert again.close() == 0
