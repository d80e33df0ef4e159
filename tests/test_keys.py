"""Key normalization (PascalCase/camelCase -> snake_case)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


@given(st.recursive(st.none() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=20))
def test_values_untouched(doc):
    out = normalize_keys(doc)
    if isinstance(doc, dict):
        assert sorted(map(repr, out.values())) == sorted(map(repr, normalize_keys(list(doc.values()))))
    elif not isinstance(doc, list):
        assert out == doc
