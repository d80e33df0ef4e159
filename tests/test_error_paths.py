"""Error field paths are relative to the request; the envelope layer puts them under the form's root."""

from __future__ import annotations

import pytest

from sdworker.errors import (
    ModelNotFound,
    UnknownMethod,
    ValidationFailed,
    placed,
    under,
)
from sdworker.protocol.envelopes import Call, Form, encode_error


def test_under_joins_a_root_and_a_relative_path() -> None:
    assert under("params", "model_id") == "params.model_id"
    assert under("data", "loras[0].path") == "data.loras[0].path"
    assert under("data", "[2]") == "data[2]" and under("params", "") == "params"


@pytest.mark.parametrize("spelled", ["loras[0].name", "data.loras[0].name"])
def test_placed_reads_relative_and_data_spelled_paths_alike(spelled: str) -> None:
    err = ValidationFailed(f"{spelled}: not found", [{"path": spelled, "message": "not found"}])
    assert placed(err, "data") == ("data.loras[0].name: not found", [{"path": "data.loras[0].name", "message": "not found"}])
    assert placed(err, "params") == ("params.loras[0].name: not found", [{"path": "params.loras[0].name", "message": "not found"}])


def test_a_message_without_its_path_is_left_alone() -> None:
    err = ModelNotFound("model 'x' was not found in the models dirs", [{"path": "model_id", "message": "not found"}])
    message, details = placed(err, "params")
    assert message == err.message and details[0]["path"] == "params.model_id"


def test_rooted_errors_go_out_as_they_are() -> None:
    method = UnknownMethod("unknown method 'x'", [{"path": "method", "message": "close match: y"}])
    assert placed(method, "params") == (method.message, method.details)
    alias = ValidationFailed("batch_size: conflicts", [{"path": "batch_size", "message": "conflicts"}], rooted=True)
    assert placed(alias, "data")[1][0]["path"] == "batch_size"


def test_encode_error_places_paths_for_each_form() -> None:
    err = ModelNotFound("model_id: gone", [{"path": "model_id", "message": "not found"}])
    rpc = encode_error(Call("inference.text2img", {}, Form.JSONRPC, "7", 7), err)
    native = encode_error(Call("inference.text2img", {}, Form.NATIVE, "r", "r"), err)
    legacy = encode_error(Call("inference.text2img", {}, Form.LEGACY, "r", "r"), err)
    assert rpc is not None and native is not None and legacy is not None
    assert rpc["error"]["data"]["error_details"][0]["path"] == "params.model_id" and rpc["error"]["message"] == "params.model_id: gone"
    assert native["error_details"][0]["path"] == legacy["error_details"][0]["path"] == "data.model_id"
    assert native["error"] == legacy["error"] == "data.model_id: gone"
    assert err.details == [{"path": "model_id", "message": "not found"}]  # the error itself is not changed
