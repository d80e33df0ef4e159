"""Key normalization (PascalCase/camelCase -> snake_case)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sdworker.errors import ValidationFailed
from sdworker.protocol.keys import normalize_keys, to_snake


@pytest.mark.parametrize(
    "key, expected",
    [
        ("GuidanceScale", "guidance_scale"),
        ("numImages", "num_images"),
        ("LoRAs", "loras"),
        ("ControlNets", "controlnets"),
        ("ModelPath", "model_path"),
        ("CFGScale", "cfg_scale"),
        ("NegativePrompt", "negative_prompt"),
        ("numInferenceSteps", "num_inference_steps"),
        ("clip_skip", "clip_skip"),
        ("Seed", "seed"),
        ("SessionId", "session_id"),
    ],
)
def test_known_keys(key, expected):
    assert to_snake(key) == expected


@given(st.text(alphabet=st.characters(categories=("Lu", "Ll", "Nd")) | st.just("_"), max_size=30))
def test_idempotent(key):
    once = to_snake(key)
    assert to_snake(once) == once


def _spellings_collide(doc) -> bool:
    """Two keys of one object that snake_case to one key (with different values: a conflict)."""
    if isinstance(doc, dict):
        snaked = [to_snake(k) for k in doc]
        return len(set(snaked)) < len(snaked) or any(_spellings_collide(v) for v in doc.values())
    if isinstance(doc, list):
        return any(_spellings_collide(v) for v in doc)
    return False


@given(st.recursive(st.none() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=20))
def test_values_untouched(doc):
    try:
        out = normalize_keys(doc)
    except ValidationFailed:
        assert _spellings_collide(doc)  # refused only when two spellings of one key disagree
        return
    if isinstance(doc, dict):
        assert sorted(map(repr, out.values())) == sorted(map(repr, normalize_keys(list(doc.values()))))
    elif not isinstance(doc, list):
        assert out == doc


def test_two_spellings_of_one_key_are_a_conflict():
    with pytest.raises(ValidationFailed) as exc:
        normalize_keys({"steps": 2, "Steps": 3}, "data")
    assert exc.value.details == [{"path": "data.Steps", "message": exc.value.details[0]["message"]}]
    assert "'steps' and 'Steps'" in exc.value.message and "2 vs 3" in exc.value.message
    with pytest.raises(ValidationFailed) as exc:
        normalize_keys({"parameters": {"GuidanceScale": 5, "guidanceScale": 6}}, "data")
    assert exc.value.details[0]["path"] == "data.parameters.guidanceScale"
    with pytest.raises(ValidationFailed):
        normalize_keys({"seed": 1, "Seed": True})  # equal in Python, not on the wire
    assert normalize_keys({"steps": 2, "Steps": 2}) == {"steps": 2}  # the same value twice: no conflict
    assert normalize_keys([{"a": 1}, {"A": 1, "b": 2}]) == [{"a": 1}, {"a": 1, "b": 2}]
