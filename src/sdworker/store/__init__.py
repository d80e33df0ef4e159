"""Embedded storage: the worker's SQLite database (`sdworker.db` under --data-dir) and what lives in it.

- db.Database: connections, one transaction per write, WAL, schema migrations (PRAGMA user_version).
- presets.PresetStore: the inference presets (`inference_configurations`), built-in fallbacks in
  builtin_presets, MongoDB import/export (also `python -m sdworker.store.presets`).

No torch, nothing opened at import: the database opens on first use, after the ready event.
Names are imported lazily so `python -m sdworker.store.presets` runs its module only once.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DB_FILE", "Database", "PresetStore"]


def __getattr__(name: str) -> Any:
    if name in ("DB_FILE", "Database"):
        from . import db

        return getattr(db, name)
    if name == "PresetStore":
        from .presets import PresetStore

        return PresetStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
