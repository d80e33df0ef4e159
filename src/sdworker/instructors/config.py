"""config.*: the inference presets (quality / speed per model, built-ins per base architecture).

The store lives in sdworker.db under --data-dir; without --data-dir it is in memory and gone at
exit. Every method reads or writes SQLite (populate also scans the models dirs), so each runs on
the worker lane, in the order sent: a job sent after a config.create sees that preset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..dispatch.registry import method
from ..protocol.envelopes import Call

if TYPE_CHECKING:
    from ..interfaces.presets import PresetInterface
    from ..schemas.presets import Preset, PresetCreateParams, PresetDeleteResult, PresetExportParams, PresetExportResult, PresetIdParams, PresetImportParams, PresetImportResult, PresetListParams, PresetListResult, PresetPopulateParams, PresetPopulateResult, PresetResolveParams, PresetUpdateParams


class ConfigInstructor:
    def __init__(self, presets: "PresetInterface"):
        self.presets = presets

    @method("config.list", "presets:PresetListParams", "presets:PresetListResult")
    def list(self, params: PresetListParams, call: Call) -> dict[str, Any]:
        """Stored presets, filtered by model_id, base_model, configuration_type; include_builtin adds built-ins."""
        p = params
        return self.presets.list(p.model_id, p.base_model, p.configuration_type, p.include_builtin, p.limit, p.offset)

    @method("config.get", "presets:PresetIdParams", "presets:Preset")
    def get(self, params: PresetIdParams, call: Call) -> dict[str, Any]:
        """One preset by id (stored or built-in)."""
        return self.presets.get(params.id)

    @method("config.create", "presets:PresetCreateParams", "presets:Preset")
    def create(self, params: PresetCreateParams, call: Call) -> dict[str, Any]:
        """Store a preset for a model; (model_id, configuration_type) is unique."""
        values = params.model_dump(exclude={"model_specific_params"})
        values["model_specific_params"] = params.model_specific_params.model_dump(exclude_unset=True)
        return self.presets.create(values)

    @method("config.update", "presets:PresetUpdateParams", "presets:Preset")
    def update(self, params: PresetUpdateParams, call: Call) -> dict[str, Any]:
        """Change the fields sent; model_specific_params is replaced whole."""
        changes = {k: getattr(params, k) for k in params.model_fields_set if k != "id"}
        if "model_specific_params" in changes:
            changes["model_specific_params"] = params.model_specific_params.model_dump(exclude_unset=True)  # type: ignore[union-attr]
        return self.presets.update(params.id, changes)

    @method("config.delete", "presets:PresetIdParams", "presets:PresetDeleteResult")
    def delete(self, params: PresetIdParams, call: Call) -> dict[str, Any]:
        """Delete a stored preset by id."""
        return self.presets.delete(params.id)

    @method("config.populate", "presets:PresetPopulateParams", "presets:PresetPopulateResult")
    def populate(self, params: PresetPopulateParams, call: Call) -> dict[str, Any]:
        """Create the missing quality/speed presets of every discovered model from its base model's built-ins."""
        return self.presets.populate(params.model_ids, params.configuration_types, params.dry_run)

    @method("config.resolve", "presets:PresetResolveParams", "presets:Preset")
    def resolve(self, params: PresetResolveParams, call: Call) -> dict[str, Any]:
        """The preset a request would use: the model's own (origin model), else its base model's built-in."""
        return self.presets.resolve(params.configuration_type, params.model_id, params.base_model)

    @method("config.import", "presets:PresetImportParams", "presets:PresetImportResult")
    def import_(self, params: PresetImportParams, call: Call) -> dict[str, Any]:
        """Load a mongoexport of the inference_configurations collection (JSON lines); all or nothing."""
        return self.presets.import_(params.jsonl, params.path, params.on_conflict)

    @method("config.export", "presets:PresetExportParams", "presets:PresetExportResult")
    def export(self, params: PresetExportParams, call: Call) -> dict[str, Any]:
        """The stored presets as mongoexport JSON lines (relaxed Extended JSON), returned or written to path."""
        p = params
        return self.presets.export(p.model_id, p.base_model, p.configuration_type, p.path)
