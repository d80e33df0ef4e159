"""The exported schemas are standard JSON Schema (Draft 2020-12) and the one source of every method's shapes.

Every method declares a params and a result model; every schema file says its dialect; the params
schemas describe the spellings a host may send (so the example requests validate under a stock
validator); and the response check that every worker round trip in the suite goes through
(wire_shapes.py) really refuses a result its schema does not allow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sdworker.protocol.legacy_names import LEGACY_ACTIONS, map_inference_type
from wire_shapes import ResultChecker

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "schemas"
EXAMPLES = REPO / "examples"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
NOT_SCHEMAS = {"example_prompt.json"}  # an example request, not a schema
LEGACY_ENVELOPE = {"action", "inference_type", "priority", "timeout", "request_id"}


def _method_files() -> list[Path]:
    return sorted((SCHEMAS / "methods").glob("*.json"))


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_schema_file_declares_draft_2020_12() -> None:
    files = [p for p in sorted(SCHEMAS.rglob("*.json")) if p.name not in NOT_SCHEMAS]
    assert len(files) > 50
    for path in files:
        doc = _load(path)
        assert doc.get("$schema") == DIALECT, path.relative_to(REPO)
        if path.parent.name == "methods":
            for part in ("params", "result"):
                assert doc[part]["$schema"] == DIALECT, f"{path.name} {part}"


@pytest.mark.parametrize("path", _method_files(), ids=lambda p: p.stem)
def test_method_schemas_are_valid_draft_2020_12(path: Path) -> None:
    doc = _load(path)
    for part in ("params", "result"):
        Draft202012Validator.check_schema(doc[part])


def test_every_registered_method_has_a_params_and_a_result_model() -> None:
    import io

    from sdworker.app import App
    from sdworker.settings import Settings

    specs = App(Settings(), io.BytesIO()).registry.specs()
    assert len(specs) >= 55
    missing = [s.name for s in specs if s.params is None or s.result is None]
    assert not missing, f"methods without a params or result model: {missing}"
    on_disk = {p.stem for p in _method_files()}
    assert {s.name for s in specs} == on_disk


def test_params_schemas_say_which_form_they_describe() -> None:
    for path in _method_files():
        assert "Accepted spellings" in _load(path)["params"]["description"], path.name
    canonical = _load(SCHEMAS / "prompt_submission_schema.json")
    assert "(canonical)" in canonical["title"] and "normalized" in canonical["description"]


def _calls(doc: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(method, params as sent) of each request on one example line, whatever its form."""
    if isinstance(doc, list):
        for item in doc:
            yield from _calls(item)
    elif "jsonrpc" in doc:
        yield doc["method"], doc.get("params") or {}
    elif "action" in doc:
        action = doc["action"]
        method = map_inference_type(doc.get("inference_type", "text2img")) if action == "execute_inference" else LEGACY_ACTIONS[action]
        yield method, {k: v for k, v in doc.items() if k not in LEGACY_ENVELOPE}
    else:
        yield doc["type"], doc.get("data") or {}


def _example_calls() -> list[Any]:
    out = []
    for path in sorted(EXAMPLES.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                calls = list(_calls(json.loads(line)))
                out.extend(pytest.param(m, p, id=f"{path.stem}:{n}:{i}") for i, (m, p) in enumerate(calls))
    return out


@pytest.mark.parametrize("method,params", _example_calls())
def test_example_requests_validate_against_their_method_params(method: str, params: dict[str, Any]) -> None:
    schema = _load(SCHEMAS / "methods" / f"{method}.json")["params"]
    errors = [f"{e.json_path}: {e.message[:200]}" for e in Draft202012Validator(schema).iter_errors(params)]
    assert not errors, f"{method}: " + "; ".join(errors)


def test_the_examples_include_every_spelling() -> None:
    """The nested C# shape, PascalCase (legacy parameters) and camelCase (JSON-RPC) are all among the examples."""
    sent = json.dumps([p.values for p in _example_calls()])
    for key in ('"Hyperparameters"', '"GuidanceScale"', '"numInferenceSteps"', '"parameters"'):
        assert key in sent, key


def test_accepted_spellings_still_refuse_unknown_keys_and_wrong_types() -> None:
    schema = _load(SCHEMAS / "methods" / "inference.text2img.json")["params"]
    v = Draft202012Validator(schema)
    assert v.is_valid({"GuidanceScale": 5.0, "numInferenceSteps": 4, "seed": -1, "Model": {"Base": "m"}})
    assert not v.is_valid({"guidance_scal": 5.0})
    assert not v.is_valid({"Width": "wide"})


def test_the_response_check_refuses_a_result_its_schema_does_not_allow() -> None:
    checker = ResultChecker()
    checker.sent({"type": "system.ping", "request_id": "p1", "data": {}})
    checker.sent({"jsonrpc": "2.0", "id": 3, "method": "system.ping"})
    checker.read({"type": "response", "request_id": "p1", "success": True, "data": {"pong": True, "time": "t"}})
    checker.read({"jsonrpc": "2.0", "id": 3, "result": {"pong": "yes"}})
    problems = checker.take_problems()
    assert checker.checked == 2 and len(problems) == 1, problems
    assert "system.ping" in problems[0] and "jsonrpc id 3" in problems[0] and "$.pong" in problems[0]


def test_a_worker_round_trip_is_checked(tmp_path: Path) -> None:
    from conftest import Worker

    w = Worker(["--models-dir", str(tmp_path), "--data-dir", ":memory:"])
    try:
        w.call("system.ping", {"echo": 1})
        w.send({"action": "get_supported_types", "request_id": "legacy-1"})
        w.wait_for(lambda m: isinstance(m, dict) and m.get("request_id") == "legacy-1")
        w.send({"jsonrpc": "2.0", "id": 9, "method": "inference.get_status"})
        w.wait_for(lambda m: isinstance(m, dict) and m.get("id") == 9)
    finally:
        assert w.close() == 0
    assert w.shapes.checked == 3


def test_the_presets_base_model_ids_are_the_one_list() -> None:
    """schemas/ may not import models/, so presets spell the ids as a Literal; it must be models' list exactly."""
    from typing import get_args

    from sdworker.models._types import BASE_MODELS
    from sdworker.schemas.presets import BaseModelId

    assert sorted(get_args(BaseModelId)) == sorted(BASE_MODELS)
