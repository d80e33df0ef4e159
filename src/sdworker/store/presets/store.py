"""PresetStore: CRUD, resolve, populate and import/export over the `inference_configurations` table.

Every write is one `Database.transaction()`; (model_id, configuration_type) is unique, and a
clash is answered as a validation_error naming the preset it conflicts with.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ...errors import ModelNotFound, ValidationFailed, WorkerError
from ..builtin_presets import BUILTIN_PRESETS, CONFIGURATION_TYPES, builtin, builtin_by_id
from ..db import Database
from .apply import apply_preset, detect_base_model, request_values
from .documents import (
    _COLUMNS,
    DOC_FIELDS,
    TABLE,
    document_to_row,
    dumps_line,
    iter_documents,
    new_object_id,
    now_iso,
    row_to_document,
)
from .rows import _conflict, _not_found, _public, _row_dict, _where, builtin_document

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ...managers.locator import ModelLocator, ModelRef

_MAX_REPORTED = 50  # error details listed per failed import


class PresetStore:
    """CRUD, resolve, populate and import/export of the presets. Returns plain dicts (wire shape)."""

    def __init__(self, db: Database, locator: ModelLocator | None = None):
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
        row: dict[str, Any] = {k: values.get(k) for k in DOC_FIELDS}
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

    def for_request(self, req: BaseModel, ref: ModelRef, keep: Iterable[str] = ()) -> tuple[BaseModel, dict[str, Any]]:
        """Apply the request's `preset` for its model; the request and what goes into `parameters`.

        `keep`: fields the preset does not set on this model (Family.preset_keeps: a FLUX.1 Fill
        model keeps its own steps and guidance); what the preset would have set there is reported
        as `preset_skipped`.
        """
        ctype = getattr(req, "preset")  # noqa: B009  (any request model with a `preset` field)
        try:
            base = self._stored_base(ref.model_id) or detect_base_model(ref)
            preset = self.resolve(ctype, model_id=ref.model_id, base_model=base)
        except ValidationFailed as exc:
            raise ValidationFailed(f"data.preset: {exc.message}", [{"path": "data.preset", "message": exc.message}]) from None
        new_req, applied = apply_preset(req, preset, keep)
        values = request_values(preset)
        skipped = {k: values[k] for k in keep if k in values and k not in req.model_fields_set}
        # the sampler and schedule are reported here; the planners apply them when the request names neither
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
        refs: Iterable[ModelRef] | None = None,
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
    ) -> builtins.list[dict[str, Any]]:  # builtins: `list` in this class is the method
        where, args = _where(model_id, base_model, configuration_type)
        return [row_to_document(r) for r in self._rows(f"SELECT * FROM {TABLE}{where} ORDER BY rowid", args)]

    def export_jsonl(self, **filters: Any) -> str:
        return "".join(dumps_line(d) + "\n" for d in self.export_documents(**filters))
