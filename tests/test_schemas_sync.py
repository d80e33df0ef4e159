"""The committed schemas/ folder is exactly what `python -m sdworker.export_schemas` writes today."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdworker.export_schemas import export_schemas, method_documents
from sdworker.schemas.generation import GenerationRequest

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "schemas"
HINT = "schemas/ is out of date: run python -m sdworker.export_schemas"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("schemas")
    export_schemas(out)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.json")) if p.is_file()}


def test_committed_schemas_match_a_fresh_export(fresh: Path) -> None:
    want, have = _files(fresh), _files(COMMITTED) if COMMITTED.is_dir() else {}
    missing = sorted(set(want) - set(have))
    differ = sorted(name for name in set(want) & set(have) if want[name] != have[name])
    stale = sorted(name for name in set(have) - set(want) if name.startswith("methods/"))
    problems = [f"missing: {n}" for n in missing] + [f"differs: {n}" for n in differ] + [f"stale: {n}" for n in stale]
    assert not problems, HINT + "\n  " + "\n  ".join(problems)


def test_export_is_deterministic(fresh: Path, tmp_path: Path) -> None:
    export_schemas(tmp_path)
    assert _files(tmp_path) == _files(fresh)
    for name, data in _files(fresh).items():
        text = data.decode("utf-8")
        assert text.endswith("}\n") and not text.endswith("\n\n"), name
        doc = json.loads(text)
        assert text == json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n", name


def test_export_removes_stale_method_files(tmp_path: Path) -> None:
    stale = tmp_path / "methods" / "inference.no_such_method.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    export_schemas(tmp_path)
    assert not stale.exists()


def test_every_registered_method_has_a_schema_file() -> None:
    docs = method_documents()
    assert "inference.text2img" in docs and "system.ping" in docs
    for name, doc in docs.items():
        path = COMMITTED / "methods" / f"{name}.json"
        assert path.is_file(), f"{HINT} (no {path.relative_to(REPO)})"
        on_disk = json.loads(path.read_text(encoding="utf-8"))
        assert on_disk["method"] == name
        assert set(on_disk) == {"$schema", "method", "job", "summary", "params", "result"}
        assert on_disk["params"]["type"] == "object"
    assert docs["inference.text2img"]["job"] is True


def test_example_prompt_is_a_valid_native_text2img_request() -> None:
    example = json.loads((COMMITTED / "example_prompt.json").read_text(encoding="utf-8"))
    assert example["type"] == "inference.text2img"
    assert isinstance(example["request_id"], str) and example["request_id"]
    req = GenerationRequest.model_validate(example["data"])
    assert req.prompt and req.seed is not None and req.model_id


def test_prompt_submission_schema_is_the_generation_request() -> None:
    schema = json.loads((COMMITTED / "prompt_submission_schema.json").read_text(encoding="utf-8"))
    assert schema["title"] and "nested" in schema["description"] and "parameters" in schema["description"]
    assert set(schema["properties"]) == set(GenerationRequest.model_fields)


def test_envelopes_schema_names_every_form() -> None:
    env = json.loads((COMMITTED / "envelopes.json").read_text(encoding="utf-8"))
    defs = env["$defs"]
    for name in ("native_request", "jsonrpc_request", "jsonrpc_batch", "legacy_request", "native_success",
                 "native_failure", "jsonrpc_success", "jsonrpc_error", "legacy_success", "legacy_failure",
                 "native_event", "jsonrpc_event", "ready_event", "request_line", "response_line"):
        assert name in defs, name


def test_export_does_not_import_torch(tmp_path: Path) -> None:
    """Building the registry and exporting must stay light: no torch, no diffusers."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from sdworker.export_schemas import export_schemas\n"
        f"export_schemas(Path({str(tmp_path)!r}))\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
