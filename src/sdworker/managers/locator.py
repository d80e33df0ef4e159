"""Find models by id inside the models dirs, refusing anything that escapes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadFailed, ModelNotFound, UnsafePath, ValidationFailed
from ..paths import NotRegularFile, TreeReport, inside, is_under, read_regular, real, resolve_in_roots, survey
from ..errors import WorkerError as WorkerErrorBase
from ..models.refs import ModelRef  # re-exported: the locator is where a ModelRef comes from
from . import transformer_files

if TYPE_CHECKING:
    from .catalog import CatalogItem, ModelCatalog

_MAX_INDEX_BYTES = 4 * 2**20  # a real model_index.json is under 2 KB


def _read_index(folder: Path, model_id: str = "") -> dict:
    """model_index.json as a dict whose _class_name is a string; anything else is model_load_failed
    with what is wrong (OSError stays: the folder may have just gone)."""
    name = folder / "model_index.json"
    who = f"model {model_id!r}: " if model_id else ""
    try:
        index = json.loads(read_regular(name, _MAX_INDEX_BYTES))
    except NotRegularFile as exc:
        raise ModelLoadFailed(f"{who}{exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, FileTooLarge
        raise ModelLoadFailed(f"{who}{name} is not a readable JSON file: {exc}") from None
    problem = index_problem(index)
    if problem:
        raise ModelLoadFailed(f"{who}{name} {problem}")
    return index


def index_problem(index: object) -> str | None:
    """What makes a parsed model_index.json unusable, in words; None when it is fine."""
    if not isinstance(index, dict):
        return f"holds a JSON {type(index).__name__}, not an object"
    cls = index.get("_class_name")
    if not isinstance(cls, str) or not cls:
        return f"has _class_name {cls!r}; it must name a diffusers pipeline class"
    for key, value in index.items():
        if isinstance(value, list) and len(value) == 2 and not all(v is None or isinstance(v, str) for v in value):
            return f"names component {key!r} as {value!r}; it must be [library, class] strings"
    return None


def _base_model(folder: Path, index: dict) -> str:
    """The family that runs the folder's pipeline class tells its base model (families.registry)."""
    from ..families.registry import folder_base_model

    return folder_base_model(folder, index)


def pickle_refused(name: str, field: str) -> UnsafePath:
    return UnsafePath(
        f"{field}: {name!r} is a pickle file (.ckpt/.pt/.pth/.bin), which can run code when loaded; "
        "use its .safetensors version, or start the worker with --allow-pickle (then loaded with weights_only)",
        [{"path": field, "message": "pickle files need --allow-pickle"}],
    )


def folder_refused(model_id: str, field: str, tree: TreeReport, allow_pickle: bool) -> Exception | None:
    """Why a model folder must not be read: a link out of the models dir (unsafe_path), an entry that
    is no regular file (a FIFO would block the loader), or pickle-only weights without --allow-pickle."""
    if tree.outside:
        return UnsafePath(
            f"{field}: {model_id!r} reads files outside the models dir through symlinks ({'; '.join(tree.outside[:3])})",
            [{"path": field, "message": "links outside the models dir"}],
        )
    if tree.unreadable:
        return ModelLoadFailed(f"{field}: {model_id!r} cannot be read: {'; '.join(tree.unreadable[:3])}", [{"path": field, "message": "unreadable"}])
    if tree.pickle_dirs and not allow_pickle:
        dirs = ", ".join(Path(d).name for d in tree.pickle_dirs)
        return UnsafePath(
            f"{field}: {model_id!r} keeps its weights as pickle files (.bin/.pt/.pth/.ckpt, no .safetensors) in {dirs}, which can run "
            "code when loaded; use a .safetensors copy, or start the worker with --allow-pickle (then loaded with weights_only)",
            [{"path": field, "message": "pickle files need --allow-pickle"}],
        )
    return None


class ModelLocator:
    """Resolves the checkpoint a generation request names (diffusers folder or single file)."""

    def __init__(self, models_dirs: list[Path], catalog: "ModelCatalog | None" = None, allow_pickle: bool = False):
        self.roots = [d for d in models_dirs]
        self.allow_pickle = allow_pickle
        if catalog is None:
            from .catalog import ModelCatalog

            catalog = ModelCatalog(self.roots)
        self.catalog = catalog
        self._pickle_bases: dict[tuple[str, int, int], tuple[str, str]] = {}  # (path, size, mtime_ns) -> (kind, base)

    def scan(self) -> list[ModelRef]:
        refs: list[ModelRef] = []
        for item in self.catalog.items():
            if item.kind == "checkpoint" or transformer_files.runs_alone(item):
                try:
                    refs.append(self._from_item(item))
                except (OSError, ValueError, WorkerErrorBase):
                    continue
        return refs

    def _root_of(self, path: Path) -> Path:
        for root in self.roots:
            real_root = real(root)
            if real_root is not None and is_under(path, real_root):
                return real_root
        raise UnsafePath(f"{path} is outside the models dirs")

    def _ref(self, model_id: str, folder: Path, field: str = "model_id") -> ModelRef:
        """A diffusers folder as a ModelRef, after checking every file a load would read."""
        where = real(folder)
        if where is None:  # gone (resolve says model_not_found), or a link to nowhere
            raise FileNotFoundError(f"{folder} does not exist")
        refused = folder_refused(model_id, field, survey(folder, self._root_of(where)), self.allow_pickle)
        if refused is not None:
            raise refused
        index = _read_index(folder, model_id)
        return ModelRef(model_id, folder, index["_class_name"], _base_model(folder, index))

    def _folders(self) -> list[ModelRef]:
        """The diffusers pipeline folders: the candidates to lend a transformer file its other parts."""
        out = []
        for item in self.catalog.items():
            if item.kind == "checkpoint" and item.format == "diffusers" and not item.unsafe:
                try:
                    out.append(self._ref(item.model_id, item.path))
                except (OSError, ValueError, WorkerErrorBase):
                    continue
        return out

    def _from_item(self, item: "CatalogItem", field: str = "model_id") -> ModelRef:
        if item.format == "diffusers":
            return self._ref(item.model_id, item.path, field)
        if transformer_files.runs_alone(item):
            pair = transformer_files.expert_pair(item.path) if item.base_model == "wan_2_2" else None
            if pair is not None and not all(inside(p, item.root) for p in pair):
                raise UnsafePath(f"{field}: the Wan 2.2 expert pair of {item.model_id!r} links outside the models dir", [{"path": field, "message": "links outside the models dir"}])
            folder = transformer_files.companion(item, self._folders(), field, pair is not None)
            high, low = pair or (item.path, None)
            return ModelRef(item.model_id, folder.path, folder.pipeline_class, item.base_model, "diffusers", high, folder.model_id, low)
        kind, base = self._pickle_kind(item) if item.format == "ckpt" else (item.kind, item.base_model)
        if kind != "checkpoint":
            raise ValidationFailed(
                f"{field}: {item.model_id!r} is a {base} {kind}, not a whole model; only Flux, HiDream and Wan "
                "transformers run from one file (with a diffusers folder of their base model for the other parts)",
                [{"path": field, "message": f"a {kind}, not a checkpoint"}],
            )
        from ..families.registry import single_file_pipelines

        return ModelRef(item.model_id, item.path, single_file_pipelines().get(base, "unknown"), base, "single_file")

    def _pickle_kind(self, item: "CatalogItem") -> tuple[str, str]:
        """A pickle checkpoint's kind and base: from its names, else from its tensors (read weights-only:
        only reached with --allow-pickle), once per file version."""
        if not self.allow_pickle or (item.kind == "checkpoint" and item.base_model != "unknown"):
            return item.kind, item.base_model
        st = item.path.stat()
        key = (str(item.path), st.st_size, st.st_mtime_ns)
        if key not in self._pickle_bases:
            from ..models.detect import detect
            from .single_file import checkpoint_shapes

            det = detect(checkpoint_shapes(item.path), None, item.path.name)
            self._pickle_bases[key] = (det.kind, det.base_model)
        return self._pickle_bases[key]

    def resolve(self, model_id: str | None, field: str = "model_id") -> ModelRef:
        if not model_id:
            raise ValidationFailed(
                "model_id is required (or start the worker with --default-model)",
                [{"path": field, "message": "required"}],
            )
        if not self.roots:
            raise ModelNotFound(f"model {model_id!r}: no --models-dir is configured")
        folder = resolve_in_roots(model_id, self.roots, field)  # unsafe_path for ../ and outside paths
        try:
            if (folder / "model_index.json").is_file():  # the fast path: no scan
                return self._ref(model_id, folder, field)
            item = self.catalog.find(model_id, ("checkpoint", "unet"), field)
            if item.pickle and not self.allow_pickle:
                raise pickle_refused(model_id, field)
            return self._from_item(item, field)
        except OSError:  # listed a moment ago, gone now
            self.catalog.invalidate()
            raise ModelNotFound(f"model {model_id!r} is no longer in the models dirs", [{"path": field, "message": "not found"}]) from None


__all__ = ["ModelLocator", "ModelRef", "UnsafePath"]
