"""The JSON Schema of every line on the wire, built from the same tables the decoder reads.

Kept apart from envelopes.py (which decodes and encodes lines) so the schema can grow without
the hot path growing with it; `sdworker.export_schemas` writes it to schemas/envelopes.json.
"""

from __future__ import annotations

from typing import Any

from ..errors import ERROR_CODES, JSONRPC_CODES
from .legacy_names import INFERENCE_TYPES, LEGACY_ACTIONS

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_ID = {"type": ["string", "integer"], "description": "echoed back as a string"}
_TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "description": "seconds; on expiry the job ends with error_code timeout"}
_PRIORITY = {"type": "integer", "default": 0, "description": "higher runs first; FIFO within one priority"}
_EVENT_NAMES = ["progress", "session_status"]
_SESSION_STATES = ["queued", "loading", "running", "postprocessing", "completed", "failed", "cancelled", "timed_out"]


def _shared_defs() -> dict[str, Any]:
    """Error codes, error details and ids, which requests and responses share."""
    return {
        "error_code": {
            "description": "Native error_code; the JSON-RPC code of each is in jsonrpc_error_code.",
            "enum": list(ERROR_CODES),
        },
        "jsonrpc_error_code": {
            "description": "JSON-RPC error.code: " + ", ".join(f"{k}={v}" for k, v in JSONRPC_CODES.items()) + ".",
            "enum": sorted(set(JSONRPC_CODES.values()), reverse=True),
        },
        "error_detail": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "dotted path of the offending field, e.g. data.width"},
                "message": {"type": "string"},
                "error_code": {"$ref": "#/$defs/error_code"},
            },
            "required": ["path", "message"],
        },
        "error_details": {"type": "array", "items": {"$ref": "#/$defs/error_detail"}},
        "jsonrpc_id": {"type": ["string", "number", "null"]},
    }


def _request_defs() -> dict[str, Any]:
    """Host -> worker: the three request forms and a JSON-RPC batch."""
    legacy_actions = sorted({"execute_inference", *LEGACY_ACTIONS})
    return {
        "native_request": {
            "title": "native request",
            "description": "The worker's own form. `message_type` (and messageType, MessageType, Type) is an alias of "
            "`type`; requestId/RequestId of `request_id`; Data of `data`. A request without an id gets a generated one.",
            "type": "object",
            "properties": {
                "type": {"type": "string", "minLength": 1, "description": "method name, e.g. inference.text2img"},
                "message_type": {"type": "string", "minLength": 1, "description": "alias of type"},
                "request_id": _ID,
                "data": {"type": ["object", "null"], "description": "method params; keys in any case style"},
                "priority": _PRIORITY,
                "timeout": _TIMEOUT,
            },
            "anyOf": [
                {"required": ["type"]},
                {"required": ["message_type"]},
                {"required": ["messageType"]},
                {"required": ["MessageType"]},
                {"required": ["Type"]},
            ],
            "not": {"anyOf": [{"required": ["jsonrpc"]}, {"required": ["action"]}]},
        },
        "jsonrpc_request": {
            "title": "JSON-RPC 2.0 request or notification",
            "description": "Without `id` it is a notification: it runs, and gets no response (nor events).",
            "type": "object",
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "id": {"$ref": "#/$defs/jsonrpc_id"},
                "method": {"type": "string", "minLength": 1},
                "params": {"type": ["object", "null"], "description": "named params only; keys in any case style"},
                "priority": _PRIORITY,
                "timeout": _TIMEOUT,
            },
            "required": ["jsonrpc", "method"],
        },
        "jsonrpc_batch": {
            "title": "JSON-RPC 2.0 batch",
            "description": "Answered by one array holding the responses of its non-notification items.",
            "type": "array",
            "minItems": 1,
            "items": {"$ref": "#/$defs/jsonrpc_request"},
        },
        "legacy_request": {
            "title": "legacy action request",
            "description": "The C# service's form: flat fields next to `action`. execute_inference picks its method "
            "from inference_type (case-insensitive, punctuation ignored); every other field (prompt, model_id, "
            "device_id, a `parameters` bag, ...) is a param. Without request_id, session_id is the id.",
            "type": "object",
            "properties": {
                "action": {"enum": legacy_actions},
                "request_id": _ID,
                "session_id": _ID,
                "model_id": {"type": "string"},
                "device_id": {"type": "string"},
                "inference_type": {
                    "type": "string",
                    "description": "for execute_inference (default text2img)",
                    "examples": sorted(INFERENCE_TYPES) + ["TextToImage", "ImageGeneration", "ImageToImage", "Inpaint"],
                },
                "prompt": {"type": "string"},
                "parameters": {"type": "object", "description": "generation fields, merged under the top level"},
                "priority": _PRIORITY,
                "timeout": _TIMEOUT,
            },
            "required": ["action"],
            "not": {"required": ["jsonrpc"]},
        },
        "request_line": {
            "title": "one stdin line",
            "oneOf": [
                {"$ref": "#/$defs/native_request"},
                {"$ref": "#/$defs/jsonrpc_request"},
                {"$ref": "#/$defs/jsonrpc_batch"},
                {"$ref": "#/$defs/legacy_request"},
            ],
        },
    }


def _response_defs() -> dict[str, Any]:
    """Worker -> host: the answer to a request, in the request's form."""
    return {
        "native_success": {
            "type": "object",
            "properties": {
                "type": {"const": "response"},
                "request_id": {"type": "string"},
                "success": {"const": True},
                "data": {"description": "the method's result (see schemas/methods/<method>.json)"},
            },
            "required": ["type", "request_id", "success", "data"],
            "additionalProperties": False,
        },
        "native_failure": {
            "type": "object",
            "properties": {
                "type": {"const": "response"},
                "request_id": {"type": ["string", "null"], "description": "null only when the line had no readable id"},
                "success": {"const": False},
                "error": {"type": "string", "description": "readable message"},
                "error_code": {"$ref": "#/$defs/error_code"},
                "error_details": {"$ref": "#/$defs/error_details"},
                "data": {"description": "partial results (a cancelled job's finished images with preserve_results)"},
            },
            "required": ["type", "request_id", "success", "error", "error_code", "error_details"],
            "additionalProperties": False,
        },
        "jsonrpc_success": {
            "type": "object",
            "properties": {"jsonrpc": {"const": "2.0"}, "id": {"$ref": "#/$defs/jsonrpc_id"}, "result": {}},
            "required": ["jsonrpc", "id", "result"],
            "additionalProperties": False,
        },
        "jsonrpc_error": {
            "type": "object",
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "id": {"$ref": "#/$defs/jsonrpc_id"},
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"$ref": "#/$defs/jsonrpc_error_code"},
                        "message": {"type": "string"},
                        "data": {
                            "type": "object",
                            "properties": {
                                "error_code": {"$ref": "#/$defs/error_code"},
                                "error_details": {"$ref": "#/$defs/error_details"},
                                "data": {"description": "partial results, as in native_failure.data"},
                            },
                            "required": ["error_code", "error_details"],
                        },
                    },
                    "required": ["code", "message", "data"],
                },
            },
            "required": ["jsonrpc", "id", "error"],
            "additionalProperties": False,
        },
        "jsonrpc_response": {"oneOf": [{"$ref": "#/$defs/jsonrpc_success"}, {"$ref": "#/$defs/jsonrpc_error"}]},
        "jsonrpc_batch_response": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/jsonrpc_response"}},
        "legacy_success": {
            "type": "object",
            "properties": {
                "success": {"const": True},
                "request_id": {"type": "string"},
                "session_id": {"type": "string", "description": "the request's session_id, else its request_id"},
                "status": {"const": "completed", "description": "the request was completed (not a session's status)"},
                "results": {"description": "the method's result"},
            },
            "required": ["success", "request_id", "session_id", "status", "results"],
            "additionalProperties": False,
        },
        "legacy_failure": {
            "type": "object",
            "properties": {
                "success": {"const": False},
                "request_id": {"type": ["string", "null"]},
                "session_id": {"type": "string"},
                "error": {"type": "string"},
                "error_code": {"$ref": "#/$defs/error_code"},
                "error_details": {"$ref": "#/$defs/error_details"},
                "status": {"enum": ["cancelled", "timed_out"], "description": "for cancelled and timeout only"},
                "results": {"description": "partial results, as in native_failure.data"},
            },
            "required": ["success", "request_id", "error", "error_code"],
            "additionalProperties": False,
        },
    }


def _event_defs() -> dict[str, Any]:
    """Worker -> host, unsolicited: the ready event, progress and session status."""
    return {
        "progress_data": {
            "type": "object",
            "properties": {
                "step": {"type": "integer", "minimum": 0},
                "total_steps": {"type": "integer", "minimum": 0},
                "percent": {"type": "number", "minimum": 0, "maximum": 100},
                "eta_seconds": {"type": ["number", "null"]},
                "image_index": {"type": "integer", "minimum": 0},
                "preview": {"type": "string", "description": "small JPEG, base64; only with preview: true"},
            },
            "required": ["step", "total_steps", "percent", "eta_seconds", "image_index"],
        },
        "session_status_data": {
            "type": "object",
            "properties": {
                "status": {"enum": _SESSION_STATES},
                "session_id": {"type": "string"},
                "progress": {
                    "type": "object",
                    "properties": {
                        "step": {"type": "integer"},
                        "total_steps": {"type": "integer"},
                        "percent": {"type": "number"},
                        "eta_seconds": {"type": ["number", "null"]},
                    },
                    "required": ["step", "total_steps", "percent"],
                },
                "error_code": {"$ref": "#/$defs/error_code"},
            },
            "required": ["status", "session_id", "progress"],
        },
        "event_body": {
            "type": "object",
            "properties": {
                "event": {"enum": _EVENT_NAMES},
                "request_id": {"type": "string"},
                "session_id": {"type": "string"},
                "data": {"type": "object"},
            },
            "required": ["event", "request_id", "session_id", "data"],
            "allOf": [
                {
                    "if": {"properties": {"event": {"const": "progress"}}},
                    "then": {"properties": {"data": {"$ref": "#/$defs/progress_data"}}},
                },
                {
                    "if": {"properties": {"event": {"const": "session_status"}}},
                    "then": {"properties": {"data": {"$ref": "#/$defs/session_status_data"}}},
                },
            ],
        },
        "native_event": {
            "title": "event of a native or legacy request",
            "allOf": [
                {"$ref": "#/$defs/event_body"},
                {"type": "object", "properties": {"type": {"const": "event"}}, "required": ["type"]},
            ],
        },
        "jsonrpc_event": {
            "title": "event of a JSON-RPC request (a notification)",
            "type": "object",
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "method": {"enum": [f"event.{e}" for e in _EVENT_NAMES]},
                "params": {"$ref": "#/$defs/event_body"},
            },
            "required": ["jsonrpc", "method", "params"],
            "additionalProperties": False,
        },
        "ready_event": {
            "title": "the first stdout line",
            "type": "object",
            "properties": {
                "type": {"const": "event"},
                "event": {"const": "ready"},
                "data": {
                    "type": "object",
                    "properties": {
                        "version": {"type": "string"},
                        "protocol": {"type": "integer"},
                        "pid": {"type": "integer"},
                        "methods": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["version", "protocol", "pid", "methods"],
                },
            },
            "required": ["type", "event", "data"],
            "additionalProperties": False,
        },
        "jsonrpc_ready_event": {
            "title": "the first stdout line under --protocol jsonrpc (a notification)",
            "type": "object",
            "properties": {"jsonrpc": {"const": "2.0"}, "method": {"const": "event.ready"}, "params": {
                "type": "object", "required": ["event", "data"],
                "properties": {"event": {"const": "ready"}, "data": {"$ref": "#/$defs/ready_event/properties/data"}}}},
            "required": ["jsonrpc", "method", "params"],
            "additionalProperties": False,
        },
    }


def _response_line() -> dict[str, Any]:
    return {
        "response_line": {
            "title": "one stdout line",
            "oneOf": [
                {"$ref": "#/$defs/ready_event"},
                {"$ref": "#/$defs/jsonrpc_ready_event"},
                {"$ref": "#/$defs/native_event"},
                {"$ref": "#/$defs/jsonrpc_event"},
                {"$ref": "#/$defs/native_success"},
                {"$ref": "#/$defs/native_failure"},
                {"$ref": "#/$defs/jsonrpc_success"},
                {"$ref": "#/$defs/jsonrpc_error"},
                {"$ref": "#/$defs/jsonrpc_batch_response"},
                {"$ref": "#/$defs/legacy_success"},
                {"$ref": "#/$defs/legacy_failure"},
            ],
        },
    }


def envelopes_schema() -> dict[str, Any]:
    """JSON Schema of every line on the wire (docs/protocol.md, protocol/envelopes.py)."""
    defs = {**_shared_defs(), **_request_defs(), **_response_defs(), **_event_defs(), **_response_line()}
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "sdworker wire envelopes",
        "description": "Every line on sdworker's stdin (#/$defs/request_line) and stdout (#/$defs/response_line). "
        "Each request is answered in its own form, exactly once (JSON-RPC notifications: never). Request data keys "
        "may be snake_case, camelCase or PascalCase; responses are snake_case. See docs/protocol.md.",
        "anyOf": [{"$ref": "#/$defs/request_line"}, {"$ref": "#/$defs/response_line"}],
        "$defs": defs,
    }
