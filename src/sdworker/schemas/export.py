"""Write the wire schemas to disk: one file per method, the generation request, the envelopes.

    python -m sdworker.schemas.export [DIR]

DIR defaults to the `schemas/` folder of the repository that holds the current directory.
The output is deterministic (sorted keys, 2-space indent, trailing newline), so the committed
folder can be diffed against a fresh export (tests/test_schemas_sync.py does that).

Building the method table constructs `sdworker.app.App` without serving: its constructor
imports no torch and starts no thread, so this runs in well under a second.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

from ..protocol.envelopes import INFERENCE_TYPES, LEGACY_ACTIONS
from ..errors import ERROR_CODES, JSONRPC_CODES
from .generation import GenerationRequest

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# ---- files ----------------------------------------------------------------------------------------


def dumps(doc: Any) -> str:
    """The one serialization every exported file uses."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(doc)
    # Rewrite only on change, so an export over an up-to-date folder touches nothing.
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
    return path


# ---- the method table -----------------------------------------------------------------------------


def method_documents() -> dict[str, dict[str, Any]]:
    """method name -> {method, job, summary, params, result}, from the live registry."""
    from ..app import App
    from ..settings import Settings

    app = App(Settings(), io.BytesIO())
    docs: dict[str, dict[str, Any]] = {}
    for spec in app.registry.specs():
        described = spec.describe()  # the same schemas system.list_methods sends
        docs[spec.name] = {
            "method": spec.name,
            "job": spec.job,
            "summary": spec.summary,
            "params": described["params_schema"],
            "result": described["result_schema"],
        }
    return docs


# ---- the generation request -----------------------------------------------------------------------


def prompt_submission_schema() -> dict[str, Any]:
    schema = GenerationRequest.model_json_schema()
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["title"] = "sdworker generation request (canonical)"
    schema["description"] = (
        "The canonical request every generation method (inference.text2img, ...) reads: the `data` of a "
        "native request, the `params` of a JSON-RPC request, or the flat fields of a legacy execute_inference. "
        "Three input shapes are accepted and normalized into this one before validation: the flat shape "
        "(these fields, with aliases such as model_name, num_inference_steps, cfg_scale, batch_size), the "
        "nested C# EnhancedSDXLRequest shape (Model{Base, Refiner, Vae}, Scheduler{Type, Steps}, "
        "Hyperparameters{GuidanceScale, Width, Height, Seed, ...}, Conditioning{Prompt, NegativePrompt, ...}), "
        "and a `parameters` bag of any of these fields, merged under the top level (the top level wins). "
        "Keys may be snake_case, camelCase or PascalCase; the worker converts them to snake_case first. "
        "Unknown keys are a validation_error."
    )
    return schema


def example_prompt() -> dict[str, Any]:
    """A realistic native text2img request; tests check its data validates as a GenerationRequest."""
    return {
        "type": "inference.text2img",
        "request_id": "req-example-0001",
        "priority": 0,
        "timeout": 300,
        "data": {
            "session_id": "session-example-0001",
            "model_id": "sdxl-base-1.0",
            "prompt": "a cozy mountain cabin at golden hour, warm light in the windows, snow on the pines, "
            "highly detailed, 35mm photograph",
            "negative_prompt": "blurry, low quality, watermark, text",
            "width": 1024,
            "height": 1024,
            "steps": 30,
            "guidance_scale": 7.0,
            "seed": 42,
            "num_images": 1,
            "preview": False,
            "output": {"format": "png", "quality": 95, "return_base64": True},
        },
    }


# ---- envelopes ------------------------------------------------------------------------------------

_ID = {"type": ["string", "integer"], "description": "echoed back as a string"}
_TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "description": "seconds; on expiry the job ends with error_code timeout"}
_PRIORITY = {"type": "integer", "default": 0, "description": "higher runs first; FIFO within one priority"}
_EVENT_NAMES = ["progress", "session_status"]
_SESSION_STATES = ["queued", "loading", "running", "postprocessing", "completed", "failed", "cancelled", "timed_out"]


def envelopes_schema() -> dict[str, Any]:
    """JSON Schema of every line on the wire (docs/protocol.md, protocol/envelopes.py)."""
    legacy_actions = sorted({"execute_inference", *LEGACY_ACTIONS})
    defs: dict[str, Any] = {
        # -- shared pieces
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
        # -- requests (host -> worker)
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
        # -- responses (worker -> host)
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
        # -- events (worker -> host, unsolicited)
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
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "sdworker wire envelopes",
        "description": "Every line on sdworker's stdin (#/$defs/request_line) and stdout (#/$defs/response_line). "
        "Each request is answered in its own form, exactly once (JSON-RPC notifications: never). Request data keys "
        "may be snake_case, camelCase or PascalCase; responses are snake_case. See docs/protocol.md.",
        "anyOf": [{"$ref": "#/$defs/request_line"}, {"$ref": "#/$defs/response_line"}],
        "$defs": defs,
    }


# ---- export ---------------------------------------------------------------------------------------


def export_schemas(out_dir: Path) -> list[Path]:
    """Write every schema file under `out_dir`; stale files in out_dir/methods are removed."""
    out_dir = Path(out_dir)
    methods_dir = out_dir / "methods"
    written: list[Path] = []
    docs = method_documents()
    for name, doc in docs.items():
        written.append(_write(methods_dir / f"{name}.json", doc))
    if methods_dir.is_dir():
        keep = {f"{name}.json" for name in docs}
        for stale in sorted(methods_dir.glob("*.json")):
            if stale.name not in keep:
                stale.unlink()
    written.append(_write(out_dir / "prompt_submission_schema.json", prompt_submission_schema()))
    written.append(_write(out_dir / "example_prompt.json", example_prompt()))
    written.append(_write(out_dir / "envelopes.json", envelopes_schema()))
    return written


def default_dir(start: Path | None = None) -> Path:
    """`schemas/` next to the nearest pyproject.toml at or above `start` (default: the cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder / "schemas"
    return here / "schemas"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m sdworker.schemas.export [DIR]  (default: <repo>/schemas)", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    out_dir = Path(args[0]) if args else default_dir()
    paths = export_schemas(out_dir)
    print(f"wrote {len(paths)} schema files to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
