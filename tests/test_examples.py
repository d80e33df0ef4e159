"""Every examples/*.jsonl fixture, piped through a real worker process as the README shows.

`sdworker --models-dir DIR --output-dir DIR < examples/X.jsonl`: every stdout line is JSON,
every request with an id gets exactly one response, none fails, notifications get none, and
the worker exits 0 after EOF. The workers run side by side (one per fixture) to keep this fast.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FIXTURES = sorted(p.name for p in EXAMPLES.glob("*.jsonl"))
EXPECTED = {"text2img.jsonl", "jsonrpc.jsonl", "legacy.jsonl", "nested.jsonl"}
TIMEOUT_S = 900  # a hang guard only: a busy machine may take minutes to import torch in five workers at once

Key = tuple[str, str]  # (form, id as JSON text): JSON-RPC 7 and "7" are different ids


def _key(form: str, raw_id: Any) -> Key:
    return (form, json.dumps(raw_id))


def request_keys(doc: Any) -> list[Key]:
    """The responses one stdin line is owed (none for JSON-RPC notifications)."""
    if isinstance(doc, list):
        return [_key("jsonrpc", item["id"]) for item in doc if isinstance(item, dict) and "id" in item]
    assert isinstance(doc, dict), doc
    if "jsonrpc" in doc:
        return [_key("jsonrpc", doc["id"])] if "id" in doc else []
    if "action" in doc:
        rid = doc.get("request_id") or doc.get("session_id")
        assert rid, f"legacy fixture line without request_id/session_id: {doc}"
        return [_key("legacy", str(rid))]
    assert doc.get("request_id"), f"native fixture line without request_id: {doc}"
    return [_key("native", str(doc["request_id"]))]


def is_generation(doc: Any) -> int:
    """How many image-generating requests (each asks for one image here) a stdin line holds."""
    if isinstance(doc, list):
        return sum(is_generation(item) for item in doc)
    if "jsonrpc" in doc:
        return int(doc.get("method") == "inference.text2img" and "id" in doc)
    if "action" in doc:
        return int(doc["action"] == "execute_inference")
    return int(doc.get("type") == "inference.text2img")


def classify(doc: Any) -> tuple[list[tuple[Key, bool, Any]], list[Any]]:
    """One stdout message -> ([(key, failed, payload)], [events])."""
    if isinstance(doc, list):
        return [(_key("jsonrpc", item["id"]), "error" in item, item.get("result", item.get("error"))) for item in doc], []
    assert isinstance(doc, dict), doc
    if "jsonrpc" in doc:
        if "method" in doc:
            assert doc["method"].startswith("event.") and "id" not in doc, doc
            return [], [doc["params"]]
        return [(_key("jsonrpc", doc["id"]), "error" in doc, doc.get("result", doc.get("error")))], []
    if doc.get("type") == "event":
        return [], [doc]
    if doc.get("type") == "response":
        return [(_key("native", doc["request_id"]), not doc["success"], doc.get("data", doc))], []
    if "success" in doc and "action" not in doc:
        return [(_key("legacy", doc["request_id"]), not doc["success"], doc.get("results", doc))], []
    raise AssertionError(f"stdout line of no known shape: {doc}")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdworker.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("example-models")
    make_tiny_model("sdxl", root / "tiny-sdxl")
    make_tiny_model("wan21", root / "tiny-wan21")  # examples/text2video.jsonl
    from sdworker.tiny.transformer_file import save_transformer_file

    flux = make_tiny_model("flux-dev", root / "tiny-flux-dev")  # examples/transformer_file.jsonl: its companion
    save_transformer_file(flux, root / "diffusion_models" / "flux1-dev-Q8_0.gguf")
    return root


@pytest.fixture(scope="module")
def runs(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Pipe every fixture into its own worker, all at once; collect exit code, stdout, stderr."""
    work = tmp_path_factory.mktemp("example-runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDWORKER_")}
    env.setdefault("OMP_NUM_THREADS", "1")  # several workers share few cores: no thread oversubscription
    started = []
    for name in FIXTURES:
        stem = Path(name).stem
        stdin = open(EXAMPLES / name, "rb")
        stdout = open(work / f"{stem}.out", "wb")
        stderr = open(work / f"{stem}.err", "wb")
        cmd = [sys.executable, "-m", "sdworker", "--models-dir", str(tiny_models), "--output-dir", str(work / f"{stem}-outputs"),
               "--data-dir", str(work / f"{stem}-data"), "--device", "cpu"]
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=work)
        started.append((name, proc, (stdin, stdout, stderr)))
    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for name, proc, files in started:
            try:
                rc = proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc = None
            for fh in files:
                fh.close()
            stem = Path(name).stem
            results[name] = {
                "rc": rc,
                "stdout": (work / f"{stem}.out").read_bytes(),
                "stderr": (work / f"{stem}.err").read_text(errors="replace"),
            }
    finally:
        for _, proc, _ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return results


def test_every_documented_fixture_exists() -> None:
    assert EXPECTED <= set(FIXTURES), f"missing: {sorted(EXPECTED - set(FIXTURES))}"
    assert (EXAMPLES / "README.md").is_file()


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_lines_are_json_objects(name: str) -> None:
    for n, line in enumerate((EXAMPLES / name).read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{name}:{n} is blank"
        doc = json.loads(line)
        assert isinstance(doc, (dict, list)), f"{name}:{n}"
        request_keys(doc)


def _job_timeouts(doc: Any) -> list[float]:
    if isinstance(doc, list):
        return [t for item in doc for t in _job_timeouts(item)]
    return [doc["timeout"]] if isinstance(doc, dict) and isinstance(doc.get("timeout"), (int, float)) else []


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_job_timeouts_never_decide_the_outcome(name: str) -> None:
    """A job's own `timeout` in a fixture is longer than the harness waits: only a hang can fail the
    run, never a slow (busy) machine, on which a short timeout turns a good job into error `timeout`."""
    for n, line in enumerate((EXAMPLES / name).read_text(encoding="utf-8").splitlines(), 1):
        for t in _job_timeouts(json.loads(line)):
            assert t > TIMEOUT_S, f"{name}:{n}: timeout {t} s is within the harness' {TIMEOUT_S} s"


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_piped_through_worker(name: str, runs: dict[str, dict[str, Any]]) -> None:
    run = runs[name]
    tail = run["stderr"][-3000:]
    assert run["rc"] == 0, f"{name}: worker exit {run['rc']} (None: still running after {TIMEOUT_S}s)\n{tail}"

    lines = run["stdout"].split(b"\n")
    assert lines[-1] == b"", f"{name}: stdout does not end with a newline"
    messages = []
    for raw in lines[:-1]:
        try:
            messages.append(json.loads(raw))
        except ValueError:
            pytest.fail(f"{name}: stdout line is not JSON: {raw[:200]!r}")
    assert messages and messages[0].get("event") == "ready", f"{name}: first line is not the ready event"

    owed: Counter[Key] = Counter()
    for line in (EXAMPLES / name).read_text(encoding="utf-8").splitlines():
        owed.update(request_keys(json.loads(line)))
    answered: Counter[Key] = Counter()
    failures, images = [], []
    request_ids = {str(json.loads(k[1])) for k in owed}
    for msg in messages[1:]:
        responses, events = classify(msg)
        for key, failed, payload in responses:
            answered[key] += 1
            if failed:
                failures.append((key, payload))
            if isinstance(payload, dict):
                images.extend(payload.get("images") or [])
        for ev in events:
            assert str(ev["request_id"]) in request_ids, f"{name}: event for a request it did not send: {ev}"
    assert not failures, f"{name}: failed responses: {failures}\n{tail}"
    assert answered == owed, f"{name}: responses {dict(answered)} != owed {dict(owed)}"

    generations = sum(is_generation(json.loads(line)) for line in (EXAMPLES / name).read_text(encoding="utf-8").splitlines())
    assert len(images) == generations, f"{name}: {generations} generation request(s), {len(images)} image(s) back"
    for img in images:
        assert (img["width"], img["height"]) == (64, 64), img
        assert base64.b64decode(img["base64"]).startswith(b"\x89PNG\r\n\x1a\n")
