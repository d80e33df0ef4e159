"""The MongoDB side of the presets: documents as mongoexport writes them, and the rows they become.

Import reads Extended JSON v2 (relaxed or canonical) and the legacy v1 forms; export writes
relaxed Extended JSON lines with each document's `_id` and unknown top-level fields as they came.
Also the stored time form (ISO 8601 UTC, milliseconds) and new ObjectIds.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from ..builtin_presets import CONFIGURATION_TYPES

TABLE = "inference_configurations"
DOC_FIELDS = (
    "id", "model_id", "base_model", "configuration_type", "steps", "cfg_scale", "sampler", "scheduler",
    "model_specific_params", "created_at", "updated_at",
)
_COLUMNS = DOC_FIELDS + ("mongo_id", "extra_fields")


# ---- time ------------------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)


def now_iso() -> str:
    return format_time(datetime.now(timezone.utc))


def format_time(dt: datetime) -> str:
    """ISO 8601 UTC with milliseconds: the one form timestamps are stored and sent in (MongoDB dates are ms)."""
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_time(value: Any) -> str:
    """A date as mongoexport writes one (ISO string, epoch ms, {"$numberLong"}) -> format_time form."""
    if isinstance(value, dict) and set(value) == {"$numberLong"}:
        value = int(value["$numberLong"])
    if isinstance(value, bool):
        raise ValueError(f"not a date: {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"not a date: {value!r}")
        return format_time(_EPOCH + timedelta(milliseconds=int(value)))
    if isinstance(value, datetime):
        return format_time(value if value.tzinfo else value.replace(tzinfo=timezone.utc))
    if not isinstance(value, str):
        raise ValueError(f"not a date: {value!r}")
    m = _ISO.match(value.strip())
    if not m:
        raise ValueError(f"not an ISO 8601 date: {value!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    dt = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), micro, tzinfo=timezone.utc)
    if tz and tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        dt = dt - sign * offset
    return format_time(dt)


def _time_to_ejson(iso: str) -> dict[str, Any]:
    """Relaxed Extended JSON v2: ISO string for years 1970-9999, canonical {"$numberLong"} otherwise."""
    dt = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    if 1970 <= dt.year <= 9999:
        return {"$date": iso}
    ms = (dt - _EPOCH) // timedelta(milliseconds=1)
    return {"$date": {"$numberLong": str(ms)}}


# ---- ids ------------------------------------------------------------------------------------------------

_oid_lock = threading.Lock()
_oid_counter = secrets.randbelow(1 << 24)
_oid_process = secrets.token_bytes(5)


def new_object_id() -> str:
    """A MongoDB ObjectId (4-byte time, 5-byte process, 3-byte counter) as 24 hex digits."""
    global _oid_counter
    with _oid_lock:
        _oid_counter = (_oid_counter + 1) % (1 << 24)
        counter = _oid_counter
    return (int(time.time()).to_bytes(4, "big") + _oid_process + counter.to_bytes(3, "big")).hex()


# ---- Extended JSON ---------------------------------------------------------------------------------------


def _binary_to_value(data_b64: str, subtype: str) -> Any:
    raw = base64.b64decode(data_b64)
    if subtype.lower().lstrip("0") in ("3", "4") and len(raw) == 16:
        return str(uuid.UUID(bytes=raw))
    return {"$binary": {"base64": data_b64, "subType": subtype}}


def decode_ejson(value: Any) -> Any:
    """MongoDB Extended JSON (v2 relaxed/canonical, v1 legacy) -> plain JSON values.

    ObjectIds and UUIDs become strings, dates the stored ISO form, numbers Python numbers.
    Wrappers without a plain JSON meaning (regex, timestamp, …) are kept as they are.
    """
    if isinstance(value, list):
        return [decode_ejson(v) for v in value]
    if not isinstance(value, dict):
        return value
    keys = set(value)
    if len(keys) == 1:
        (key,) = keys
        inner = value[key]
        if key == "$oid" and isinstance(inner, str):
            return inner
        if key == "$date":
            return parse_time(inner)
        if key in ("$numberInt", "$numberLong") and isinstance(inner, (str, int)) and not isinstance(inner, bool):
            return int(inner)
        if key in ("$numberDouble", "$numberDecimal") and isinstance(inner, (str, int, float)) and not isinstance(inner, bool):
            number = float(inner)
            if not math.isfinite(number):
                raise ValueError(f"{key} {inner!r} is not a finite number (JSON cannot hold it)")
            return number
        if key == "$uuid" and isinstance(inner, str):
            return str(uuid.UUID(inner))
        if key == "$binary" and isinstance(inner, dict) and {"base64", "subType"} <= set(inner):
            return _binary_to_value(inner["base64"], str(inner["subType"]))
        if key == "$symbol" and isinstance(inner, str):
            return inner
        if key == "$undefined":
            return None
    if keys == {"$binary", "$type"} and isinstance(value["$binary"], str):  # legacy v1 binary
        return _binary_to_value(value["$binary"], str(value["$type"]))
    return {k: decode_ejson(v) for k, v in value.items()}


def iter_documents(text: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each document of mongoexport output; --jsonArray arrays too.

    A line that is not JSON yields (line, ValueError) so the caller can report every bad line.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            docs = json.loads(stripped)
        except ValueError as exc:
            yield 1, ValueError(f"not a JSON array: {exc}")
            return
        for i, doc in enumerate(docs, start=1):
            yield i, doc
        return
    # Split on \n only: str.splitlines() would also split inside strings holding U+0085 or U+2028,
    # which JSON (and mongoexport without ASCII escaping) may carry raw.
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.strip(" \t\r")
        if not line:
            continue
        try:
            yield i, json.loads(line)
        except ValueError as exc:
            yield i, ValueError(f"not JSON: {exc}")


def document_to_row(doc: Any) -> dict[str, Any]:
    """One mongoexport document -> the values of one row. ValueError says what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("a document must be a JSON object")
    raw_mongo_id = doc.get("_id")
    d = {k: decode_ejson(v) for k, v in doc.items() if k != "_id"}
    row: dict[str, Any] = {}

    pid = d.get("id")
    if pid is None:
        pid = str(uuid.uuid4())
    if not isinstance(pid, str) or not pid.strip():
        raise ValueError("id must be a non-empty string")
    row["id"] = pid
    for key in ("model_id", "base_model"):
        v = d.get(key)
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{key} must be a non-empty string")
        row[key] = v
    ctype = d.get("configuration_type")
    if not isinstance(ctype, str) or ctype.strip().lower() not in CONFIGURATION_TYPES:
        raise ValueError(f"configuration_type must be one of {', '.join(CONFIGURATION_TYPES)} (got {ctype!r})")
    row["configuration_type"] = ctype.strip().lower()
    steps = d.get("steps")
    if isinstance(steps, float) and steps.is_integer():
        steps = int(steps)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (got {steps!r})")
    row["steps"] = steps
    cfg = d.get("cfg_scale")
    if not isinstance(cfg, (int, float)) or isinstance(cfg, bool) or not math.isfinite(cfg) or cfg < 0:
        raise ValueError(f"cfg_scale must be a number >= 0 (got {cfg!r})")
    row["cfg_scale"] = float(cfg)
    for key in ("sampler", "scheduler"):
        v = d.get(key)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{key} must be a string or null (got {v!r})")
        row[key] = v
    msp = d.get("model_specific_params")
    if msp is None:
        msp = {}
    if not isinstance(msp, dict):
        raise ValueError("model_specific_params must be an object")
    row["model_specific_params"] = msp
    stamp = now_iso()
    row["created_at"] = parse_time(d["created_at"]) if d.get("created_at") is not None else stamp
    row["updated_at"] = parse_time(d["updated_at"]) if d.get("updated_at") is not None else row["created_at"]
    row["mongo_id"] = raw_mongo_id if raw_mongo_id is not None else {"$oid": new_object_id()}
    row["extra_fields"] = {k: v for k, v in doc.items() if k != "_id" and k not in DOC_FIELDS}
    return row


def row_to_document(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row -> the relaxed Extended JSON document mongoexport would write for it."""
    doc: dict[str, Any] = {"_id": row["mongo_id"] if row.get("mongo_id") is not None else {"$oid": new_object_id()}}
    for key in DOC_FIELDS:
        value = row[key]
        if key in ("created_at", "updated_at"):
            value = _time_to_ejson(value)
        doc[key] = value
    for key, value in (row.get("extra_fields") or {}).items():
        doc.setdefault(key, value)
    return doc


def dumps_line(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
