"""Find models by id inside the models dirs, refusing anything that escapes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..paths import resolve_in_roots
from ..errors import ModelNotFound, UnsafePath, ValidationFailed
from ..errors import WorkerError as WorkerErrorBase
from . import transformer_files

if TYPE_CHECKING:
    from .catalog import CatalogItem, ModelCatalog

@dataclass(frozen=True)
class ModelRef:
    """A runnable model. With `transformer_file` set (managers.transformer_files), `path` is the
    companion diffusers folder that lends everything but the transformer, which the file holds."""

    model_id: str
    path: Path
    pipeline_class: str
    base_model: str
    format: str = "diffusers"
    transformer_file: Path | None = None
    components_from: str | None = None  # the companion folder's model_id, with transformer_file
    transformer_2_file: Path | None = None  # Wan 2.2 A14B's low-noise expert, with transformer_file

    def describe(self) -> dict[str, str]:
        """The model's fields in a result's `parameters`."""
        out = {"model_id": self.model_id, "base_model": self.base_model}
        if self.components_from is not None:
            out["components_from"] = self.components_from
        return out

    @property
    def source(self) -> Path:
        """What identifies the model's weights: the transformer file, or the folder / single file."""
        return self.transformer_file or self.path

    @property
    def weights_format(self) -> str:
        """How the denoiser's weights are stored on disk: gguf, or the model's format."""
        if self.transformer_file is not None and self.transformer_file.suffix.lower() == ".gguf":
            return "gguf"
        return self.format


def _read_index(folder: Path) -> dict:
    with open(folder / "model_index.json", "rb") as fh:
        return json.load(fh)


def _base_model(folder: Path, index: dict) -> str:
    """The family that runs the folder's pipeline class tells its base model (families.registry)."""
    from ..families.registry import folder_base_model

    return folder_base_model(folder, index)


_SINGLE_FILE_PIPELINES = {
    "sdxl": "StableDiffusionXLPipeline",
    "pony": "StableDiffusionXLPipeline",
    "sd_1_5": "StableDiffusionPipeline",
    "sd_2": "StableDiffusionPipeline",
}


def pickle_refused(name: str, field: str) -> UnsafePath:
    return UnsafePath(
        f"{field}: {name!r} is a pickle file (.ckpt/.pt/.bin), which can run code when loaded; "
        "use its .safetensors version, or start the worker with --allow-pickle (then loaded with weights_only)",
        [{"path": field, "message": "pickle files need --allow-pickle"}],
    )


class ModelLocator:
    """Resolves the checkpoint a generation request names (diffusers folder or single file)."""

    def __init__(self, models_dirs: list[Path], catalog: "ModelCatalog | None" = None, allow_pickle: bool = False):
        self.roots = [d for d in models_dirs]
        self.allow_pickle = allow_pickle
        if catalog is None:
            from .catalog import ModelCatalog

            catalog = ModelCatalog(self.roots)
        self.catalog = catalog

    def scan(self) -> list[ModelRef]:
        refs: list[ModelRef] = []
        for item in self.catalog.items():
            if item.kind == "checkpoint" or transformer_files.runs_alone(item):
                try:
                    refs.append(self._from_item(item))
                except (OSError, ValueError, WorkerErrorBase):
                    continue
        return refs

    def _ref(self, model_id: str, folder: Path) -> ModelRef:
        index = _read_index(folder)
        return ModelRef(model_id, folder, index.get("_class_name", "DiffusionPipeline"), _base_model(folder, index))

    def _folders(self) -> list[ModelRef]:
        """The diffusers pipeline folders: the candidates to lend a transformer file its other parts."""
        out = []
        for item in self.catalog.items():
            if item.kind == "checkpoint" and item.format == "diffusers":
                try:
                    out.append(self._ref(item.model_id, item.path))
                except (OSError, ValueError):
                    continue
        return out

    def _from_item(self, item: "CatalogItem", field: str = "data.model_id") -> ModelRef:
        if item.format == "diffusers":
            return self._ref(item.model_id, item.path)
        if transformer_files.runs_alone(item):
            pair = transformer_files.expert_pair(item.path) if item.base_model == "wan_2_2" else None
            folder = transformer_files.companion(item, self._folders(), field, pair is not None)
            high, low = pair or (item.path, None)
            return ModelRef(item.model_id, folder.path, folder.pipeline_class, item.base_model, "diffusers", high, folder.model_id, low)
        if item.kind != "checkpoint":
            raise ValidationFailed(
                f"{field}: {item.model_id!r} is a {item.base_model} {item.kind}, not a whole model; only Flux, HiDream and Wan "
                "transformers run from one file (with a diffusers folder of their base model for the other parts)",
                [{"path": field, "message": f"a {item.kind}, not a checkpoint"}],
            )
        return ModelRef(item.model_id, item.path, _SINGLE_FILE_PIPELINES.get(item.base_model, "unknown"), item.base_model, "single_file")

    def resolve(self, model_id: str | None, field: str = "data.model_id") -> ModelRef:
        if not model_id:
            raise ValidationFailed(
                "model_id is required (or start the worker with --default-model)",
                [{"path": field, "message": "required"}],
            )
        if not self.roots:
            raise ModelNotFound(f"model {model_id!r}: no --models-dir is configured")
        folder = resolve_in_roots(model_id, self.roots, field)  # unsafe_path for ../ and outside paths
        if (folder / "model_index.json").is_file():  # the fast path: no scan
            return self._ref(model_id, folder)
        item = self.catalog.find(model_id, ("checkpoint", "unet"), field)
        if item.pickle and not self.allow_pickle:
            raise pickle_refused(model_id, field)
        try:
            return self._from_item(item, field)
        except OSError:  # listed a moment ago, gone now
            self.catalog.invalidate()
            raise ModelNotFound(f"model {model_id!r} is no longer in the models dirs", [{"path": field, "message": "not found"}]) from None


__all__ = ["ModelLocator", "ModelRef", "UnsafePath"]
