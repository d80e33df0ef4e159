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

Modules: documents (Extended JSON, time, ids, document <-> row), rows (row <-> wire dict),
apply (a model's base model, a preset applied to a request), store (PresetStore), __main__ (CLI).
"""

from __future__ import annotations

from .apply import apply_preset, detect_base_model, request_values
from .documents import (
    DOC_FIELDS,
    TABLE,
    decode_ejson,
    document_to_row,
    dumps_line,
    format_time,
    iter_documents,
    new_object_id,
    now_iso,
    parse_time,
    row_to_document,
)
from .rows import builtin_document
from .store import PresetStore

__all__ = [
    "DOC_FIELDS", "TABLE", "PresetStore", "apply_preset", "builtin_document", "decode_ejson", "detect_base_model",
    "document_to_row", "dumps_line", "format_time", "iter_documents", "new_object_id", "now_iso", "parse_time",
    "request_values", "row_to_document",
]
