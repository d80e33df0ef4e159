"""Every result a test reads from a worker is checked against the committed schemas/methods/<method>.json.

The Worker in conftest.py tells a `ResultChecker` each request it sends (so it knows which method an
id belongs to, in each of the three forms) and each line it reads; a success whose result does not
validate under Draft 2020-12 is recorded, and the test that drove the worker fails with the method,
the id, the JSON path and jsonschema's message. Validators are compiled once per method per session.
"""

from __future__ import annotations

import json
import threading
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

METHODS_DIR = Path(__file__).resolve().parents[1] / "schemas" / "methods"
_MAX_REPORTED = 5


@cache
def result_validator(method: str) -> Draft202012Validator | None:
    """The compiled validator of a method's result, or None for a name with no schema file."""
    path = METHODS_DIR / f"{method}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text(encoding="utf-8"))["result"]
    if schema is None:
        return None
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@cache
def _legacy_actions() -> dict[str, str]:
    from sdworker.protocol.legacy_names import LEGACY_ACTIONS

    return dict(LEGACY_ACTIONS)


def _legacy_method(doc: dict[str, Any]) -> str | None:
    action = doc.get("action")
    if action == "execute_inference":
        from sdworker.protocol.legacy_names import map_inference_type

        try:
            return map_inference_type(doc.get("inference_type", "text2img"))
        except Exception:  # noqa: BLE001  (an unknown type is answered with an error: nothing to check)
            return None
    return _legacy_actions().get(action) if isinstance(action, str) else None


def _first(doc: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((doc[k] for k in keys if k in doc), None)


def _id_text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return json.dumps(value)


class ResultChecker:
    """Knows which method each sent request called; checks the results read back."""

    def __init__(self) -> None:
        self._methods: dict[tuple[str, str], str] = {}  # (form, id as JSON text) -> method
        self._lock = threading.Lock()
        self.problems: list[str] = []
        self.checked = 0

    # ---- requests ------------------------------------------------------------------------------

    def sent(self, message: Any) -> None:
        if isinstance(message, (bytes, bytearray)):
            for line in bytes(message).splitlines():
                try:
                    self._note(json.loads(line.decode("utf-8-sig")))
                except (ValueError, UnicodeDecodeError, RecursionError):  # hostile lines: nothing to note
                    continue
            return
        self._note(message)

    def _note(self, doc: Any) -> None:
        if isinstance(doc, list):
            for item in doc:
                self._note(item)
            return
        if not isinstance(doc, dict):
            return
        if "jsonrpc" in doc:
            key, method = ("jsonrpc", _id_text(doc.get("id"))), doc.get("method")
        elif "action" in doc:
            rid = doc.get("request_id") or doc.get("session_id")
            key, method = ("legacy", _id_text(str(rid)) if rid is not None else None), _legacy_method(doc)
        else:
            rid = _first(doc, ("request_id", "requestId", "RequestId"))
            key, method = ("native", _id_text(str(rid)) if rid is not None else None), _first(doc, ("type", "message_type", "messageType", "MessageType", "Type"))
        if key[1] is not None and isinstance(method, str):
            with self._lock:
                self._methods[key] = method

    # ---- responses -----------------------------------------------------------------------------

    def read(self, doc: Any) -> None:
        if isinstance(doc, list):
            for item in doc:
                self.read(item)
            return
        if not isinstance(doc, dict):
            return
        if doc.get("jsonrpc") == "2.0" and "result" in doc:
            self._check(("jsonrpc", _id_text(doc.get("id"))), doc["result"])
        elif doc.get("type") == "response" and doc.get("success") is True:
            self._check(("native", _id_text(doc.get("request_id"))), doc.get("data"))
        elif "action" not in doc and doc.get("success") is True and "results" in doc:
            self._check(("legacy", _id_text(doc.get("request_id"))), doc["results"])

    def _check(self, key: tuple[str, str | None], result: Any) -> None:
        with self._lock:
            method = self._methods.get(key) if key[1] is not None else None
        if method is None:
            return  # not a request this checker saw (a test writing to stdin by hand): nothing to match
        validator = result_validator(method)
        if validator is None:
            return
        self.checked += 1
        errors = sorted(validator.iter_errors(result), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"  at {e.json_path}: {e.message[:300]}" for e in errors[:_MAX_REPORTED]]
            more = f"\n  (and {len(errors) - _MAX_REPORTED} more)" if len(errors) > _MAX_REPORTED else ""
            text = f"{method} result for {key[0]} id {key[1]} does not match schemas/methods/{method}.json:\n" + "\n".join(lines) + more
            with self._lock:
                self.problems.append(text)

    def take_problems(self) -> list[str]:
        with self._lock:
            out, self.problems = self.problems, []
        return out
