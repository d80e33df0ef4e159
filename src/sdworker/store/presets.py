"""PresetStore: the `inference_configurations` collection in SQLite, its built-in fallbacks, and
its MongoDB import/export.

Documents keep the existing backend's shape field for field (id, model_id, base_model,
configuration_type, steps, cfg_scale, sampler, scheduler, model_specific_params, created_at,
updated_at). Every write is one `Database.transaction()`; (model_id, configuration_type) is
unique, and a clash is answered as a validation_error naming the preset it conflicts with.

Import reads `mongoexport` output (Extended JSON v2, relaxed or canonical, and the legacy v1
forms: `{"$oid"}`, `{"$date": "…"|ms|{"$numberLong"}}`, `{"$numberInt"}`, `{"$numberDouble"}`,
`{"$binary"}` UUIDs, …), one document per line or one `--jsonArray` array. Export writes relaxed
Extended JSON lines, the shape mongoexport writes and mongoimport reads, with each document's
`_id` and unknown top-level fields given back as they came.

    python -m sdworker.store.presets export --data-dir DIR [FILE]
    python -m sdworker.store.presets import --data-dir DIR [--on-conflict error|skip|replace] FILE
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..errors import ModelNotFound, ValidationFailed, WorkerError
from .builtin_presets import BUILTIN_PRESETS, CONFIGURATION_TYPES, BuiltinPreset, builtin, builtin_by_id
from .db import Database

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..managers.locator import ModelLocator, ModelRef

TABLE = "inference_configurations"
DOC_FIELDS = (
    "id", "model_id", "base_model", "configuration_type", "steps", "cfg_scale", "sampler", "scheduler",
    "model_specific_params", "created_at", "updated_at",
)
_COLUMNS = DOC_FIELDS + ("mongo_id", "extra_fields")
_MAX_REPORTED = 50  # error details listed per failed import


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


# ---- base model detection ------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def detect_base_model(ref: "ModelRef") -> str:
    """The contract's base_model id of a discovered model.

    The locator knows the Stable Diffusion families from model_index.json; this refines what it
    cannot tell apart: Pony (an SDXL fine-tune, by name), the Flux variants (schnell has no guidance
    embedding; krea and dev by name), HiDream, and Wan 2.1 vs 2.2 (2.2 has two experts).
    """
    base, name, cls = ref.base_model, ref.model_id.lower(), ref.pipeline_class or ""
    if base == "sdxl" and "pony" in name:
        return "pony"
    if base not in ("unknown", "flux"):
        return base
    if cls.startswith("Flux") or base == "flux":
        if "schnell" in name:
            return "flux_schnell"
        if "krea" in name:
            return "flux_krea"
        embeds = _read_json(ref.path / "transformer" / "config.json").get("guidance_embeds")
        if embeds is False:
            return "flux_schnell"
        return "flux_dev" if ("dev" in name or embeds is True) else "flux"
    if cls.startswith("HiDream"):
        return "hidream"
    if cls.startswith("Wan"):
        index = _read_json(ref.path / "model_index.json")
        two_experts = index.get("transformer_2") not in (None, [None, None]) or index.get("boundary_ratio") is not None
        if two_experts or index.get("expand_timesteps") or re.search(r"wan[\s_.-]?2[._]?2", name):
            return "wan_2_2"
        return "wan_2_1"
    return base


# ---- applying a preset to a request ------------------------------------------------------------------

# model_specific_params key -> generation request field (applied only when the request has that field).
_REQUEST_FIELDS = (
    ("width", "width"),
    ("height", "height"),
    ("clip_skip", "clip_skip"),
    ("num_frames", "num_frames"),
    ("video_fps", "fps"),
    ("guidance_scale_2", "guidance_scale_2"),
    ("max_sequence_length", "max_sequence_length"),
)


def request_values(preset: dict[str, Any]) -> dict[str, Any]:
    """Request field -> value a preset provides (before the request's own values win)."""
    msp = preset.get("model_specific_params") or {}
    guidance = msp.get("guidance")
    distilled = isinstance(guidance, (int, float)) and not isinstance(guidance, bool)
    out: dict[str, Any] = {
        "steps": preset["steps"],
        # Guidance-distilled pipelines (Flux dev/krea/schnell) read their distilled guidance as
        # diffusers' guidance_scale; everything else reads real CFG there.
        "guidance_scale": float(guidance) if distilled else preset["cfg_scale"],
    }
    if distilled:  # their cfg_scale is real CFG on top (Flux: true_cfg_scale, used with a negative prompt)
        out["true_cfg_scale"] = float(preset["cfg_scale"])
    for key, field in _REQUEST_FIELDS:
        if msp.get(key) is not None:
            out[field] = msp[key]
    return out


@lru_cache(maxsize=256)
def _field_adapter(model: type, name: str) -> Any:
    from typing import Annotated

    from pydantic import TypeAdapter

    info = model.model_fields[name]  # type: ignore[attr-defined]
    return TypeAdapter(Annotated[info.annotation, info])


def apply_preset(req: "BaseModel", preset: dict[str, Any], keep: Iterable[str] = ()) -> tuple["BaseModel", dict[str, Any]]:
    """`req` with the preset's values under the fields it set itself (model_fields_set), except
    the fields in `keep` (the model's family keeps its own defaults there).

    Returns the new request and the values applied (field -> value). A value that the request's
    own field rejects (a hand-made preset with width 1000) is a validation_error at data.preset.
    """
    from pydantic import ValidationError

    model = type(req)
    fields = model.model_fields
    applied: dict[str, Any] = {}
    for name, value in request_values(preset).items():
        if name not in fields or name in req.model_fields_set or name in keep:
            continue
        try:
            applied[name] = _field_adapter(model, name).validate_python(value)
        except ValidationError as exc:
            msg = exc.errors(include_url=False)[0].get("msg", "invalid")
            where = f"preset {preset['id']} ({preset['origin']}, {preset['configuration_type']})"
            raise ValidationFailed(
                f"data.preset: {where} sets {name}={value!r}, which is invalid: {msg}; fix the preset or send {name}",
                [{"path": "data.preset", "message": f"{name}={value!r} from {where}: {msg}"}],
            ) from None
    return (req.model_copy(update=applied) if applied else req), applied


# ---- the store -------------------------------------------------------------------------------------------


def builtin_document(b: BuiltinPreset) -> dict[str, Any]:
    return {
        "id": b.id,
        "model_id": None,
        "base_model": b.base_model,
        "configuration_type": b.configuration_type,
        "steps": b.steps,
        "cfg_scale": float(b.cfg_scale),
        "sampler": b.sampler,
        "scheduler": b.scheduler,
        "model_specific_params": dict(b.model_specific_params),
        "created_at": None,
        "updated_at": None,
        "origin": "builtin",
        "source": b.source,
    }


def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = {k: row[k] for k in _COLUMNS}
    d["cfg_scale"] = float(d["cfg_scale"])
    d["model_specific_params"] = json.loads(d["model_specific_params"])
    d["extra_fields"] = json.loads(d["extra_fields"])
    d["mongo_id"] = json.loads(d["mongo_id"]) if d["mongo_id"] is not None else None
    return d


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in DOC_FIELDS}
    out["origin"] = "model"
    out["source"] = None
    return out


def _not_found(preset_id: str) -> ValidationFailed:
    return ValidationFailed(f"no preset with id {preset_id!r}", [{"path": "data.id", "message": f"unknown preset id {preset_id!r}"}])


def _conflict(model_id: str, ctype: str, other_id: str, path: str = "data.configuration_type") -> ValidationFailed:
    return ValidationFailed(
        f"a {ctype} preset for model {model_id!r} already exists: conflicts with preset id {other_id}",
        [{"path": path, "message": f"conflicts with preset id {other_id} (model_id and configuration_type are unique together)"}],
    )


def _where(model_id: str | None, base_model: str | None, configuration_type: str | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    for col, val in (("model_id", model_id), ("base_model", base_model), ("configuration_type", configuration_type)):
        if val is not None:
            clauses.append(f"{col} = ?")
            args.append(val)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


class PresetStore:
    """CRUD, resolve, populate and import/export of the presets. Returns plain dicts (wire shape)."""

    def __init__(self, db: Database, locator: "ModelLocator | None" = None):
        self.db = db
        self.locator = locator

    # ---- reads -------------------------------------------------------------------------------------

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return [_row_dict(r) for r in conn.execute(sql, tuple(args)).fetchall()]

    def list(
        self,
        model_id: str | None = None,
        base_model: str | None = None,
        configuration_type: str | None = None,
        include_builtin: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """(page, total): stored presets by base_model, model_id, type; then matching built-ins."""
        where, args = _where(model_id, base_model, configuration_type)
        items = [_public(r) for r in self._rows(f"SELECT * FROM {TABLE}{where} ORDER BY base_model, model_id, configuration_type", args)]
        if include_builtin and model_id is None:
            items += [
                builtin_document(b) for b in BUILTIN_PRESETS
                if base_model in (None, b.base_model) and configuration_type in (None, b.configuration_type)
            ]
        total = len(items)
        end = None if limit is None else offset + limit
        return items[offset:end], total

    def get(self, preset_id: str) -> dict[str, Any]:
        b = builtin_by_id(preset_id)
        if b is not None:
            return builtin_document(b)
        rows = self._rows(f"SELECT * FROM {TABLE} WHERE id = ?", (preset_id,))
        if not rows:
            raise _not_found(preset_id)
        return _public(rows[0])

    def find(self, model_id: str, configuration_type: str) -> dict[str, Any] | None:
        rows = self._rows(f"SELECT * FROM {TABLE} WHERE model_id = ? AND configuration_type = ?", (model_id, configuration_type))
        return _public(rows[0]) if rows else None

    def count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])

    # ---- writes ------------------------------------------------------------------------------------

    def _insert(self, conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        values = dict(row)
        values["model_specific_params"] = json.dumps(values.get("model_specific_params") or {}, allow_nan=False)
        values["extra_fields"] = json.dumps(values.get("extra_fields") or {}, allow_nan=False)
        mongo_id = values.get("mongo_id")
        values["mongo_id"] = json.dumps(mongo_id if mongo_id is not None else {"$oid": new_object_id()}, allow_nan=False)
        conn.execute(
            f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
            tuple(values[c] for c in _COLUMNS),
        )

    def _check_unique(self, conn: sqlite3.Connection, row: dict[str, Any], own_id: str | None = None) -> None:
        if own_id is None:
            hit = conn.execute(f"SELECT id FROM {TABLE} WHERE id = ?", (row["id"],)).fetchone()
            if hit is not None:
                raise ValidationFailed(
                    f"preset id {row['id']} already exists: conflicts with preset id {row['id']}",
                    [{"path": "data.id", "message": f"conflicts with preset id {row['id']}"}],
                )
        hit = conn.execute(
            f"SELECT id FROM {TABLE} WHERE model_id = ? AND configuration_type = ? AND id IS NOT ?",
            (row["model_id"], row["configuration_type"], own_id),
        ).fetchone()
        if hit is not None:
            raise _conflict(row["model_id"], row["configuration_type"], hit["id"])

    def create(self, values: dict[str, Any]) -> dict[str, Any]:
        """Insert one preset (id generated when absent; base_model detected when absent)."""
        row = {k: values.get(k) for k in DOC_FIELDS}
        row["id"] = row["id"] or str(uuid.uuid4())
        if not row.get("base_model"):
            row["base_model"] = self.base_model_of(row["model_id"], field="data.base_model")
        row["model_specific_params"] = dict(row.get("model_specific_params") or {})
        row["cfg_scale"] = float(row["cfg_scale"])
        row["created_at"] = row["updated_at"] = now_iso()
        with self.db.transaction() as conn:
            self._check_unique(conn, row)
            try:
                self._insert(conn, row)
            except sqlite3.IntegrityError as exc:  # a race with another process on the same file
                raise self._integrity(conn, row, exc) from None
        return self.get(row["id"])

    def _integrity(self, conn: sqlite3.Connection, row: dict[str, Any], exc: sqlite3.IntegrityError) -> WorkerError:
        hit = conn.execute(
            f"SELECT id FROM {TABLE} WHERE (model_id = ? AND configuration_type = ?) OR id = ?",
            (row["model_id"], row["configuration_type"], row["id"]),
        ).fetchone()
        if hit is not None:
            return _conflict(row["model_id"], row["configuration_type"], hit["id"])
        return ValidationFailed(f"preset rejected by the database: {exc}", [{"path": "data", "message": str(exc)}])

    def update(self, preset_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change the given fields (model_specific_params replaced whole); updated_at moves on."""
        if builtin_by_id(preset_id) is not None:
            raise ValidationFailed(
                f"preset {preset_id} is built in and read-only; config.create a preset for the model instead",
                [{"path": "data.id", "message": "built-in presets are read-only"}],
            )
        with self.db.transaction() as conn:
            found = conn.execute(f"SELECT * FROM {TABLE} WHERE id = ?", (preset_id,)).fetchone()
            if found is None:
                raise _not_found(preset_id)
            row = _row_dict(found)
            for key, value in changes.items():
                if key in DOC_FIELDS and key not in ("id", "created_at", "updated_at"):
                    row[key] = float(value) if key == "cfg_scale" else value
            row["updated_at"] = max(now_iso(), row["updated_at"])
            self._check_unique(conn, row, own_id=preset_id)
            try:
                conn.execute(
                    f"UPDATE {TABLE} SET model_id = ?, base_model = ?, configuration_type = ?, steps = ?, cfg_scale = ?, "
                    "sampler = ?, scheduler = ?, model_specific_params = ?, updated_at = ? WHERE id = ?",
                    (
                        row["model_id"], row["base_model"], row["configuration_type"], row["steps"], row["cfg_scale"],
                        row["sampler"], row["scheduler"], json.dumps(row["model_specific_params"], allow_nan=False),
                        row["updated_at"], preset_id,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise self._integrity(conn, row, exc) from None
        return self.get(preset_id)

    def delete(self, preset_id: str) -> dict[str, Any]:
        if builtin_by_id(preset_id) is not None:
            raise ValidationFailed(
                f"preset {preset_id} is built in and cannot be deleted",
                [{"path": "data.id", "message": "built-in presets are read-only"}],
            )
        with self.db.transaction() as conn:
            if conn.execute(f"DELETE FROM {TABLE} WHERE id = ?", (preset_id,)).rowcount == 0:
                raise _not_found(preset_id)
        return {"deleted": True, "id": preset_id}

    # ---- resolve -----------------------------------------------------------------------------------

    def _stored_base(self, model_id: str) -> str | None:
        with self.db.read() as conn:
            hit = conn.execute(f"SELECT base_model FROM {TABLE} WHERE model_id = ? ORDER BY configuration_type LIMIT 1", (model_id,)).fetchone()
        return str(hit["base_model"]) if hit is not None else None

    def base_model_of(self, model_id: str, field: str = "data.model_id") -> str:
        """A model's base_model: from its stored presets, else detected from the models dirs."""
        stored = self._stored_base(model_id)
        if stored is not None:
            return stored
        if self.locator is None:
            raise ValidationFailed(f"{field}: base_model is required (no models dirs to detect it from)", [{"path": field, "message": "required"}])
        try:
            ref = self.locator.resolve(model_id, "data.model_id")
        except ModelNotFound as exc:
            raise ModelNotFound(f"{exc.message}; send base_model to name its architecture", exc.details) from None
        return detect_base_model(ref)

    def resolve(self, configuration_type: str, model_id: str | None = None, base_model: str | None = None) -> dict[str, Any]:
        """The model's own preset (origin model), else its base model's built-in (origin builtin).

        Without base_model, a model's base model is the one its stored presets name, else the one
        detected in the models dirs.
        """
        if model_id is not None:
            own = self.find(model_id, configuration_type)
            if own is not None:
                return own
            if base_model is None:
                base_model = self.base_model_of(model_id)
        if base_model is None:
            raise ValidationFailed("send model_id or base_model", [{"path": "data.model_id", "message": "required"}])
        b = builtin(base_model, configuration_type)
        if b is None:
            subject = f"model {model_id!r} (base_model {base_model})" if model_id else f"base_model {base_model!r}"
            known = ", ".join(dict.fromkeys(p.base_model for p in BUILTIN_PRESETS))
            raise ValidationFailed(
                f"no {configuration_type} preset for {subject}: built-ins cover {known}; config.create one for the model",
                [{"path": "data.model_id" if model_id else "data.base_model", "message": f"no {configuration_type} preset"}],
            )
        return builtin_document(b)

    def for_request(self, req: "BaseModel", ref: "ModelRef", keep: Iterable[str] = ()) -> tuple["BaseModel", dict[str, Any]]:
        """Apply the request's `preset` for its model; the request and what goes into `parameters`.

        `keep`: fields the preset does not set on this model (Family.preset_keeps: a FLUX.1 Fill
        model keeps its own steps and guidance); what the preset would have set there is reported
        as `preset_skipped`.
        """
        ctype = getattr(req, "preset")
        try:
            base = self._stored_base(ref.model_id) or detect_base_model(ref)
            preset = self.resolve(ctype, model_id=ref.model_id, base_model=base)
        except ValidationFailed as exc:
            raise ValidationFailed(f"data.preset: {exc.message}", [{"path": "data.preset", "message": exc.message}]) from None
        new_req, applied = apply_preset(req, preset, keep)
        values = request_values(preset)
        skipped = {k: values[k] for k in keep if k in values and k not in req.model_fields_set}
        # TODO(scheduler module): when the sampler/scheduler mapping lands, set the request's
        # sampler/scheduler from preset["sampler"]/preset["scheduler"] when it sets neither; until
        # then the worker runs the model's default scheduler and only reports the preset's choice.
        info = {
            "preset": ctype,
            "preset_origin": preset["origin"],
            "preset_id": preset["id"],
            "preset_base_model": preset["base_model"],
            "preset_applied": applied,
            "preset_sampler": preset["sampler"],
            "preset_scheduler": preset["scheduler"],
        }
        if skipped:
            info["preset_skipped"] = skipped
        return new_req, info

    # ---- populate ----------------------------------------------------------------------------------

    def populate(
        self,
        refs: "Iterable[ModelRef] | None" = None,
        configuration_types: Iterable[str] = CONFIGURATION_TYPES,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Copy the built-ins into the database for every model lacking them; one transaction."""
        if refs is None:
            refs = self.locator.scan() if self.locator is not None else []
        types = list(dict.fromkeys(configuration_types))
        created: list[dict[str, Any]] = []
        models: list[dict[str, Any]] = []
        skipped = 0
        stamp = now_iso()
        with self.db.transaction() as conn:
            for ref in refs:
                known = conn.execute(f"SELECT base_model FROM {TABLE} WHERE model_id = ? LIMIT 1", (ref.model_id,)).fetchone()
                base = str(known["base_model"]) if known is not None else detect_base_model(ref)
                entry: dict[str, Any] = {"model_id": ref.model_id, "base_model": base, "created": [], "skipped": [], "reason": None}
                reasons = []
                for ctype in types:
                    exists = conn.execute(
                        f"SELECT id FROM {TABLE} WHERE model_id = ? AND configuration_type = ?", (ref.model_id, ctype)
                    ).fetchone()
                    b = builtin(base, ctype)
                    if exists is not None or b is None:
                        entry["skipped"].append(ctype)
                        skipped += 1
                        reasons.append("exists" if exists is not None else f"no built-in {ctype} preset for {base}")
                        continue
                    row = {
                        "id": str(uuid.uuid4()), "model_id": ref.model_id, "base_model": base, "configuration_type": ctype,
                        "steps": b.steps, "cfg_scale": float(b.cfg_scale), "sampler": b.sampler, "scheduler": b.scheduler,
                        "model_specific_params": dict(b.model_specific_params), "created_at": stamp, "updated_at": stamp,
                    }
                    if not dry_run:
                        self._insert(conn, row)
                    entry["created"].append(ctype)
                    created.append({**row, "origin": "model", "source": None})
                if reasons:
                    entry["reason"] = "; ".join(dict.fromkeys(reasons))
                models.append(entry)
        return {"created": len(created), "skipped": skipped, "items": created, "models": models, "dry_run": dry_run}

    # ---- import / export ---------------------------------------------------------------------------

    def import_jsonl(self, text: str, on_conflict: str = "error", field: str = "data.jsonl") -> dict[str, Any]:
        """Load mongoexport output in one transaction: all documents, or (on any error) none."""
        if on_conflict not in ("error", "skip", "replace"):
            raise ValueError(f"on_conflict {on_conflict!r}")
        errors: list[dict[str, str]] = []
        rows: list[tuple[int, dict[str, Any]]] = []
        total = 0
        for line, doc in iter_documents(text):
            total += 1
            try:
                if isinstance(doc, Exception):
                    raise doc
                rows.append((line, document_to_row(doc)))
            except (ValueError, TypeError, KeyError, OverflowError) as exc:
                errors.append({"path": f"{field}[{line}]", "message": f"line {line}: {exc}"})
        imported = replaced = 0
        skipped_ids: list[str] = []
        with self.db.transaction() as conn:
            for line, row in rows:
                if errors and len(errors) >= _MAX_REPORTED:
                    break
                clash = conn.execute(
                    f"SELECT id, model_id, configuration_type FROM {TABLE} WHERE id = ? OR (model_id = ? AND configuration_type = ?)",
                    (row["id"], row["model_id"], row["configuration_type"]),
                ).fetchall()
                if clash:
                    if on_conflict == "error":
                        errors.append({"path": f"{field}[{line}]", "message": f"line {line}: conflicts with preset id {clash[0]['id']}"})
                        continue
                    if on_conflict == "skip":
                        skipped_ids.append(row["id"])
                        continue
                    conn.executemany(f"DELETE FROM {TABLE} WHERE id = ?", [(c["id"],) for c in clash])
                    replaced += 1
                try:
                    self._insert(conn, row)
                    imported += 1
                except (sqlite3.IntegrityError, ValueError) as exc:
                    errors.append({"path": f"{field}[{line}]", "message": f"line {line}: {exc}"})
            if errors:
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise ValidationFailed(f"import failed, nothing was imported: {errors[0]['message']}{more}", errors[:_MAX_REPORTED])
        return {"total": total, "imported": imported, "replaced": replaced, "skipped": len(skipped_ids), "skipped_ids": skipped_ids}

    def export_documents(
        self, model_id: str | None = None, base_model: str | None = None, configuration_type: str | None = None
    ) -> list[dict[str, Any]]:
        where, args = _where(model_id, base_model, configuration_type)
        return [row_to_document(r) for r in self._rows(f"SELECT * FROM {TABLE}{where} ORDER BY rowid", args)]

    def export_jsonl(self, **filters: Any) -> str:
        return "".join(dumps_line(d) + "\n" for d in self.export_documents(**filters))


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same folder, fsync, rename: a reader never sees half an export."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---- command line ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .db import DB_FILE

    p = argparse.ArgumentParser(prog="python -m sdworker.store.presets", description="Import or export the presets collection (mongoexport JSON lines).")
    p.add_argument("action", choices=["import", "export"])
    p.add_argument("file", nargs="?", help="import: the file to read ('-' or absent: stdin); export: the file to write (absent: stdout)")
    p.add_argument("--data-dir", default=os.environ.get("SDWORKER_DATA_DIR"), help="the worker's --data-dir (env SDWORKER_DATA_DIR)")
    p.add_argument("--on-conflict", choices=["error", "skip", "replace"], default="error")
    args = p.parse_intermixed_args(argv)
    if not args.data_dir:
        p.error("--data-dir is required")
    store = PresetStore(Database(Path(args.data_dir).expanduser() / DB_FILE))
    try:
        if args.action == "import":
            text = sys.stdin.read() if args.file in (None, "-") else Path(args.file).read_text(encoding="utf-8")
            print(json.dumps(store.import_jsonl(text, args.on_conflict, field="file")), file=sys.stderr)
        else:
            out = store.export_jsonl()
            if args.file:
                write_atomic(Path(args.file), out)
            else:
                sys.stdout.write(out)
    except WorkerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for d in exc.details[:20]:
            print(f"  {d.get('path')}: {d.get('message')}", file=sys.stderr)
        return 1
    finally:
        store.db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
