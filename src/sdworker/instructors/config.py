"""config.*: the inference presets (quality / speed per model, built-ins per base architecture).

Answered at once, also while a job runs (SQLite WAL: reads never wait on a write). The store
lives in sdworker.db under --data-dir; without --data-dir it is in memory and gone at exit.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dispatch.registry import method
from ..paths import resolve_in_roots
from ..protocol.envelopes import Call
from ..errors import UnsafePath, ValidationFailed, WorkerError

if TYPE_CHECKING:
    from ..schemas.presets import Preset, PresetCreateParams, PresetDeleteResult, PresetExportParams, PresetExportResult, PresetIdParams, PresetImportParams, PresetImportResult, PresetListParams, PresetListResult, PresetPopulateParams, PresetPopulateResult, PresetResolveParams, PresetUpdateParams
    from ..app import App

_MAX_IMPORT_BYTES = 256 * 2**20


class ConfigInstructor:
    def __init__(self, app: "App"):
        self.app = app

    @property
    def store(self):  # noqa: ANN201 - PresetStore
        return self.app.presets

    @method("config.list", "presets:PresetListParams", "presets:PresetListResult")
    def list(self, params: PresetListParams, call: Call) -> dict[str, Any]:
        """Stored presets, filtered by model_id, base_model, configuration_type; include_builtin adds built-ins."""
        items, total = self.store.list(
            params.model_id, params.base_model, params.configuration_type, params.include_builtin, params.limit, params.offset
        )
        return {"items": items, "count": len(items), "total": total}

    @method("config.get", "presets:PresetIdParams", "presets:Preset")
    def get(self, params: PresetIdParams, call: Call) -> dict[str, Any]:
        """One preset by id (stored or built-in)."""
        return self.store.get(params.id)

    @method("config.create", "presets:PresetCreateParams", "presets:Preset")
    def create(self, params: PresetCreateParams, call: Call) -> dict[str, Any]:
        """Store a preset for a model; (model_id, configuration_type) is unique."""
        values = params.model_dump(exclude={"model_specific_params"})
        values["model_specific_params"] = params.model_specific_params.model_dump(exclude_unset=True)
        return self.store.create(values)

    @method("config.update", "presets:PresetUpdateParams", "presets:Preset")
    def update(self, params: PresetUpdateParams, call: Call) -> dict[str, Any]:
        """Change the fields sent; model_specific_params is replaced whole."""
        changes = {k: getattr(params, k) for k in params.model_fields_set if k != "id"}
        if "model_specific_params" in changes:
            changes["model_specific_params"] = params.model_specific_params.model_dump(exclude_unset=True)  # type: ignore[union-attr]
        return self.store.update(params.id, changes)

    @method("config.delete", "presets:PresetIdParams", "presets:PresetDeleteResult")
    def delete(self, params: PresetIdParams, call: Call) -> dict[str, Any]:
        """Delete a stored preset by id."""
        return self.store.delete(params.id)

    @method("config.populate", "presets:PresetPopulateParams", "presets:PresetPopulateResult")
    def populate(self, params: PresetPopulateParams, call: Call) -> dict[str, Any]:
        """Create the missing quality/speed presets of every discovered model from its base model's built-ins."""
        refs = self.app.locator.scan()
        if params.model_ids is not None:
            wanted = set(params.model_ids)
            missing = sorted(wanted - {r.model_id for r in refs})
            if missing:
                raise ValidationFailed(
                    f"model(s) not found in the models dirs: {', '.join(missing)}",
                    [{"path": "data.model_ids", "message": f"not found: {m}"} for m in missing],
                )
            refs = [r for r in refs if r.model_id in wanted]
        return self.store.populate(refs, params.configuration_types, params.dry_run)

    @method("config.resolve", "presets:PresetResolveParams", "presets:Preset")
    def resolve(self, params: PresetResolveParams, call: Call) -> dict[str, Any]:
        """The preset a request would use: the model's own (origin model), else its base model's built-in."""
        return self.store.resolve(params.configuration_type, params.model_id, params.base_model)

    # ---- import / export -------------------------------------------------------------------------------

    def _roots(self, *, reading: bool) -> list[Path]:
        s = self.app.settings
        roots = [r for r in (s.data_dir, s.output_dir) if r is not None]
        if reading:
            roots += list(s.input_dirs)
        return roots

    @method("config.import", "presets:PresetImportParams", "presets:PresetImportResult")
    def import_(self, params: PresetImportParams, call: Call) -> dict[str, Any]:
        """Load a mongoexport of the inference_configurations collection (JSON lines); all or nothing."""
        text = params.jsonl
        field = "data.jsonl"
        if params.path is not None:
            field = "data.path"
            roots = self._roots(reading=True)
            if not roots:
                raise UnsafePath("data.path: no --data-dir, --input-dir or --output-dir to read from", [{"path": field, "message": "no allowed roots"}])
            path = resolve_in_roots(params.path, roots, field)
            try:
                if path.stat().st_size > _MAX_IMPORT_BYTES:
                    raise ValidationFailed(f"data.path: {path} is over {_MAX_IMPORT_BYTES >> 20} MiB", [{"path": field, "message": "too large"}])
                text = path.read_text(encoding="utf-8-sig")
            except OSError as exc:
                raise ValidationFailed(f"data.path: cannot read {path}: {exc.strerror or exc}", [{"path": field, "message": "cannot read"}]) from None
            except UnicodeDecodeError as exc:
                raise ValidationFailed(f"data.path: {path} is not UTF-8 text: {exc}", [{"path": field, "message": "not UTF-8"}]) from None
        assert text is not None
        return self.store.import_jsonl(text, params.on_conflict, field=field)

    @method("config.export", "presets:PresetExportParams", "presets:PresetExportResult")
    def export(self, params: PresetExportParams, call: Call) -> dict[str, Any]:
        """The stored presets as mongoexport JSON lines (relaxed Extended JSON), returned or written to path."""
        text = self.store.export_jsonl(model_id=params.model_id, base_model=params.base_model, configuration_type=params.configuration_type)
        count = text.count("\n")
        if params.path is None:
            return {"count": count, "jsonl": text, "path": None}
        roots = self._roots(reading=False)
        if not roots:
            raise UnsafePath("data.path: no --data-dir or --output-dir to write to", [{"path": "data.path", "message": "no allowed roots"}])
        path = resolve_in_roots(params.path, roots, "data.path")
        try:
            from ..atomic import write_text_atomic

            write_text_atomic(path, text)
        except OSError as exc:
            raise WorkerError(f"cannot write {path}: {exc.strerror or exc}", code="internal_error") from None
        return {"count": count, "jsonl": None, "path": str(path)}
