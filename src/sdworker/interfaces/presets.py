"""config.*: the inference presets over the preset store, with the files the host imports and exports.

The store (SQLite) is opened on first use, so the ready event never waits for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UnsafePath, ValidationFailed, WorkerError
from ..paths import FileTooLarge, read_regular, resolve_in_roots

if TYPE_CHECKING:
    from ..managers.locator import ModelLocator
    from ..settings import Settings
    from ..store.presets import PresetStore

_MAX_IMPORT_BYTES = 256 * 2**20


class PresetInterface:
    def __init__(self, store: Callable[[], "PresetStore"], locator: "ModelLocator | None", settings: "Settings"):
        self._store = store
        self.locator = locator  # None at a cluster front: what needs the models dirs runs on a replica
        self.settings = settings

    @property
    def store(self) -> "PresetStore":
        return self._store()

    def list(self, model_id: str | None, base_model: str | None, configuration_type: str | None, include_builtin: bool, limit: int, offset: int) -> dict[str, Any]:
        items, total = self.store.list(model_id, base_model, configuration_type, include_builtin, limit, offset)
        return {"items": items, "count": len(items), "total": total}

    def get(self, preset_id: str) -> dict[str, Any]:
        return self.store.get(preset_id)

    def create(self, values: dict[str, Any]) -> dict[str, Any]:
        return self.store.create(values)

    def update(self, preset_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self.store.update(preset_id, changes)

    def delete(self, preset_id: str) -> dict[str, Any]:
        return self.store.delete(preset_id)

    def populate(self, model_ids: list[str] | None, configuration_types: Any, dry_run: bool) -> dict[str, Any]:
        assert self.locator is not None
        refs = self.locator.scan()
        if model_ids is not None:
            wanted = set(model_ids)
            missing = sorted(wanted - {r.model_id for r in refs})
            if missing:
                raise ValidationFailed(
                    f"model(s) not found in the models dirs: {', '.join(missing)}",
                    [{"path": "model_ids", "message": f"not found: {m}"} for m in missing],
                )
            refs = [r for r in refs if r.model_id in wanted]
        return self.store.populate(refs, configuration_types, dry_run)

    def resolve(self, configuration_type: str, model_id: str | None, base_model: str | None) -> dict[str, Any]:
        return self.store.resolve(configuration_type, model_id, base_model)

    # ---- import / export -------------------------------------------------------------------------------

    def _roots(self, *, reading: bool) -> list[Path]:
        s = self.settings
        roots = [r for r in (s.data_dir, s.output_dir) if r is not None]
        if reading:
            roots += list(s.input_dirs)
        return roots

    def import_(self, jsonl: str | None, path: str | None, on_conflict: str) -> dict[str, Any]:
        """A mongoexport of the inference_configurations collection (JSON lines), sent or read from path; all or nothing."""
        text = jsonl
        field = "jsonl"
        if path is not None:
            field = "path"
            roots = self._roots(reading=True)
            if not roots:
                raise UnsafePath("path: no --data-dir, --input-dir or --output-dir to read from", [{"path": field, "message": "no allowed roots"}])
            file = resolve_in_roots(path, roots, field)
            try:
                text = read_regular(file, _MAX_IMPORT_BYTES).decode("utf-8-sig")  # a FIFO is refused, never waited on
            except FileTooLarge:
                raise ValidationFailed(f"path: {file} is over {_MAX_IMPORT_BYTES >> 20} MiB", [{"path": field, "message": "too large"}]) from None
            except OSError as exc:
                raise ValidationFailed(f"path: cannot read {file}: {exc.strerror or exc}", [{"path": field, "message": "cannot read"}]) from None
            except UnicodeDecodeError as exc:
                raise ValidationFailed(f"path: {file} is not UTF-8 text: {exc}", [{"path": field, "message": "not UTF-8"}]) from None
        assert text is not None
        return self.store.import_jsonl(text, on_conflict, field=field)

    def export(self, model_id: str | None, base_model: str | None, configuration_type: str | None, path: str | None) -> dict[str, Any]:
        text = self.store.export_jsonl(model_id=model_id, base_model=base_model, configuration_type=configuration_type)
        count = text.count("\n")
        if path is None:
            return {"count": count, "jsonl": text, "path": None}
        roots = self._roots(reading=False)
        if not roots:
            raise UnsafePath("path: no --data-dir or --output-dir to write to", [{"path": "path", "message": "no allowed roots"}])
        file = resolve_in_roots(path, roots, "path")
        try:
            from ..atomic import write_text_atomic

            write_text_atomic(file, text)
        except OSError as exc:
            raise WorkerError(f"cannot write {file}: {exc.strerror or exc}", code="internal_error") from None
        return {"count": count, "jsonl": None, "path": str(file)}
