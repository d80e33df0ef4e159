"""Component managers: load one part of a model (UNet, VAE, encoders, tokenizers) into the cache.

Each manager owns a family of component names and knows how to read it from a diffusers folder
(`<model>/<sub>/config.json` + weights); what is loaded goes into the MemoryManager under its
content identity (fingerprint.py), so a second model with the same weights gets the same object.
Pipelines never load weights themselves: they are assembled from these entries.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelLoadFailed
from . import fingerprint, transformer_files
from . import weights as weights_mod
from .cached_load import CachedLoader
from .memory import CacheEntry, MemoryManager, module_bytes

_LIBRARIES = ("diffusers", "transformers")


def component_class(library: str, class_name: str) -> type:
    """The class model_index.json names; only from the libraries a pipeline may use."""
    if library not in _LIBRARIES:
        raise ModelLoadFailed(f"component library {library!r} is not one of {', '.join(_LIBRARIES)}")
    if not isinstance(class_name, str):
        raise ModelLoadFailed(f"component class {class_name!r} is not a class name (model_index.json)")
    cls = getattr(importlib.import_module(library), class_name, None)
    if not isinstance(cls, type):
        raise ModelLoadFailed(f"{library} has no class {class_name!r} (needed by the model's model_index.json)")
    return cls


class ComponentManager(CachedLoader):
    """Loads the components named in `names`; shared base of the per-kind managers."""

    names: tuple[str, ...] = ()
    has_dtype = True  # tokenizers do not

    def __init__(self, memory: MemoryManager, torch_dtype: Any):
        self.memory = memory
        self._torch_dtype = torch_dtype  # name -> torch.dtype (Runtime.torch_dtype)
        self.disk_loads = 0

    def handles(self, name: str) -> bool:
        return name in self.names

    def key(self, folder: Path, dtype: str, weights: str = weights_mod.FULL) -> str:
        held = weights_mod.held_as(dtype if self.has_dtype else "-", weights)
        return fingerprint.of_folder(folder, f"{type(self).__name__}:{held}")

    def load(
        self, folder: Path, library: str, class_name: str, dtype: str, model_id: str, component: str, weights: str = weights_mod.FULL
    ) -> CacheEntry:
        """The cache entry for the component in `folder`, read from disk only when not cached."""
        try:
            key = self.key(folder, dtype, weights)
        except OSError as exc:
            raise ModelLoadFailed(f"model {model_id!r}: cannot read {component} at {folder}: {exc}") from exc
        read = lambda: self._read(component_class(library, class_name), folder, dtype, weights)  # noqa: E731
        return self._cached(key, folder, dtype, weights, model_id, component, read)

    def _cached(
        self, key: str, source: Path, dtype: str, weights: str, model_id: str, component: str, read: Callable[[], Any]
    ) -> CacheEntry:
        """The entry under `key`, or what `read` gives, put into the cache under it."""
        return self.cached(
            key, model_id, read,
            lambda obj: self.entry(key, component, obj, weights_mod.held_as(dtype, weights), source, model_id),
            label=lambda _: f"{component} of {model_id}",
            failure=lambda exc: f"model {model_id!r}: {component} could not be loaded from {source}: {type(exc).__name__}: {exc}",
        )

    def entry(self, key: str, component: str, obj: Any, dtype: str, source: Path, model_id: str) -> CacheEntry:
        return CacheEntry(key, component, obj, module_bytes(obj), "cpu", dtype if self.has_dtype else "-", str(source), {model_id})

    def _read(self, cls: type, folder: Path, dtype: str, weights: str = weights_mod.FULL) -> Any:
        kwargs: dict[str, Any] = {"local_files_only": True}
        if self.has_dtype:
            kwargs["dtype"] = self._torch_dtype(dtype)
        if weights != weights_mod.FULL:
            import torch

            kwargs.update(weights_mod.load_kwargs(weights, torch, kwargs["dtype"]))
        obj = cls.from_pretrained(str(folder), **kwargs)  # type: ignore[attr-defined]
        if weights != weights_mod.FULL:
            weights_mod.apply(obj, weights, torch, kwargs["dtype"])
        if hasattr(obj, "eval"):
            obj.eval()
        return obj


class UNetManager(ComponentManager):
    names = ("unet", "transformer", "transformer_2", "prior", "decoder")  # transformer_2: Wan 2.2's low-noise expert

    def load_file(
        self, path: Path, folder: Path, library: str, class_name: str, dtype: str, model_id: str, weights: str = weights_mod.FULL,
        component: str = "transformer",
    ) -> CacheEntry:
        """A transformer whose weights are the file `path` and whose config is the companion `folder`'s
        `component` (managers.transformer_files); cached by the file's identity."""
        try:
            key = fingerprint.of_file(path, f"{type(self).__name__}:file:{weights_mod.held_as(dtype, weights)}")
        except OSError as exc:
            raise ModelLoadFailed(f"model {model_id!r}: cannot read {path}: {exc}") from exc

        def read() -> Any:
            import torch

            torch_dtype = self._torch_dtype(dtype)
            extra = weights_mod.load_kwargs(weights, torch, torch_dtype)
            obj = transformer_files.load(component_class(library, class_name), path, folder, torch_dtype, extra, component)
            weights_mod.apply(obj, weights, torch, torch_dtype)
            return obj.eval()

        return self._cached(key, path, dtype, weights, model_id, component, read)


class EncoderManager(ComponentManager):
    names = ("text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4", "image_encoder")  # _4: HiDream's Llama


class TokenizerManager(ComponentManager):
    names = ("tokenizer", "tokenizer_2", "tokenizer_3", "tokenizer_4", "image_processor")  # image_processor: Wan 2.1 I2V's CLIP
    has_dtype = False

