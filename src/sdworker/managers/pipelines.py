"""Pipelines assembled from cached components.

A pipeline object is only references: its weights are MemoryManager entries, loaded by the
component managers and shared by content. So "loading" a model the cache already holds is
building a small object (milliseconds), a model evicted from VRAM comes back from RAM, and two
models with the same text encoder hold one copy of it. Mode pipelines (img2img, inpainting)
come from `from_pipe` over the same components: no reload, no second copy.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..errors import ModelLoadFailed
from . import fingerprint, modes, schedulers
from .components import ComponentManager, UNetManager, component_class
from ..models.refs import ModelRef
from .memory import CacheEntry, MemoryManager, collect, module_bytes
from .runtime import Runtime
from .weights import FULL, held_as

log = logging.getLogger(__name__)

_NO_SAFETY = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


@dataclass
class Recipe:
    """How to build a model's pipeline from cache entries (read once from disk)."""

    pipeline_class: type
    components: dict[str, tuple[str, str]]  # name -> (library, class) of weight-bearing/tokenizer parts
    scheduler_class: type
    scheduler_config: dict[str, Any]
    extra: dict[str, Any]  # scalar init args from model_index.json (force_zeros_for_empty_prompt, ...)


@dataclass
class LoadedPipeline:
    ref: ModelRef
    pipe: Any
    dtype: str
    keys: dict[str, str]  # component -> cache key
    load_ms: float = 0.0  # last time it had to be built
    disk_reads: int = 0  # components read from disk when it was built
    device: str = "cpu"
    loaded_at: float = field(default_factory=time.time)
    runs: int = 0
    modes: dict[str, Any] = field(default_factory=dict)  # mode -> pipeline sharing these components
    scheduler_config: dict[str, Any] = field(default_factory=dict)  # as loaded, never mutated
    scheduler_class: type | None = None  # the model's own scheduler class, as loaded
    memory_mode: str = "none"  # set by model.optimize_model; offload modes place weights themselves
    weights: str = FULL  # how the denoiser is held (managers.weights)

    @property
    def offloaded(self) -> bool:
        return self.memory_mode in ("model_cpu_offload", "sequential_cpu_offload")

    def describe(self, memory: MemoryManager) -> dict[str, Any]:
        comps = {}
        for name, key in self.keys.items():
            e = memory.get(key)
            comps[name] = {"key": key, "device": e.device if e else None, "mb": round(e.nbytes / 2**20, 2) if e else None}
        return {
            "model_id": self.ref.model_id,
            "base_model": self.ref.base_model,
            "pipeline_class": type(self.pipe).__name__,
            "device": self.device,
            "dtype": self.dtype,
            "weights": self.weights,
            "load_ms": self.load_ms,
            "memory_mode": self.memory_mode,
            "runs": self.runs,
            "modes": sorted(self.modes),
            "components": comps,
        }


@dataclass
class LoadReport:
    ms: float
    disk_reads: int  # 0: everything came from the cache

    @property
    def fresh(self) -> bool:
        return self.disk_reads > 0


class PipelineManager:
    def __init__(self, runtime: Runtime, memory: MemoryManager, managers: list[ComponentManager]):
        self.runtime = runtime
        self.memory = memory
        self.managers = managers
        self._lock = threading.RLock()
        self._resident: dict[tuple[str, str], LoadedPipeline] = {}  # (model path, dtype) -> pipeline
        self._recipes: dict[str, Recipe] = {}
        self.load_count = 0  # pipelines that needed a disk read
        self.single_file_loader: Callable[..., Any] | None = None
        memory.on_evict(self._evicted)

    def manager_for(self, component: str) -> ComponentManager:
        for m in self.managers:
            if m.handles(component):
                return m
        raise ModelLoadFailed(f"no manager loads component {component!r}")

    # ---- get / build ---------------------------------------------------------------------------

    def get(self, ref: ModelRef, device: str, dtype: str, weights: str = FULL) -> tuple[LoadedPipeline, LoadReport]:
        """The pipeline of `ref`, its weights on `device` ("ram": built, weights left in RAM).

        `weights` (managers.weights): how the denoiser is held (full, fp8 storage, quantized).
        """
        t0 = time.perf_counter()
        with self._lock:
            key = (str(ref.source), held_as(dtype, weights))
            loaded = self._resident.get(key)
            reads = 0
            if loaded is None or any(self.memory.get(k) is None for k in loaded.keys.values()):
                loaded, reads = self._build(ref, dtype, weights)
                loaded.weights = weights
                self._resident[key] = loaded
            if device != "ram" and not loaded.offloaded:
                self.memory.place(loaded.keys.values(), device)
                loaded.device = device
            ms = round((time.perf_counter() - t0) * 1000, 2)
            if reads:
                loaded.load_ms = ms
                self.load_count += 1
            return loaded, LoadReport(ms, reads)

    def _build(self, ref: ModelRef, dtype: str, weights: str = FULL) -> tuple[LoadedPipeline, int]:
        recipe = self._recipes.get(str(ref.path))
        if ref.format == "single_file" and (recipe is None or not self._all_cached(ref, recipe, dtype)):
            return self._build_single_file(ref, dtype)
        if recipe is None:
            recipe = self._recipes[str(ref.path)] = self._read_recipe(ref)
        before = sum(m.disk_loads for m in self.managers)
        objs: dict[str, Any] = {}
        keys: dict[str, str] = {}
        for name, (library, cls_name) in recipe.components.items():
            if ref.format == "single_file":
                entry = self.memory.get(self._single_key(ref, name, dtype))
                assert entry is not None
            else:
                manager = self.manager_for(name)
                held = weights if isinstance(manager, UNetManager) else FULL  # only the denoiser changes format
                file = {"transformer": ref.transformer_file, "transformer_2": ref.transformer_2_file}.get(name)
                if file is not None and isinstance(manager, UNetManager):
                    entry = manager.load_file(file, ref.path, library, cls_name, dtype, ref.model_id, held, name)
                else:
                    entry = manager.load(ref.path / name, library, cls_name, dtype, ref.model_id, name, held)
            objs[name] = entry.obj
            keys[name] = entry.key
        reads = sum(m.disk_loads for m in self.managers) - before
        return self._assemble(ref, recipe, objs, keys, dtype), reads

    def _assemble(self, ref: ModelRef, recipe: Recipe, objs: dict[str, Any], keys: dict[str, str], dtype: str) -> LoadedPipeline:
        scheduler = recipe.scheduler_class.from_config(recipe.scheduler_config)
        accepted = inspect.signature(recipe.pipeline_class.__init__).parameters
        kwargs = {k: v for k, v in {**_NO_SAFETY, **recipe.extra, **objs}.items() if k in accepted}
        for name, param in accepted.items():  # optional parts the model does not have (image_encoder, ...)
            if name not in kwargs and name not in ("self", "scheduler") and param.default is inspect.Parameter.empty:
                kwargs[name] = None
        try:
            pipe = recipe.pipeline_class(scheduler=scheduler, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadFailed(f"model {ref.model_id!r}: {recipe.pipeline_class.__name__} could not be built: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        return LoadedPipeline(
            ref, pipe, dtype, keys, scheduler_config=dict(recipe.scheduler_config), scheduler_class=recipe.scheduler_class
        )

    def _read_recipe(self, ref: ModelRef) -> Recipe:
        try:
            index = json.loads((ref.path / "model_index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadFailed(f"model {ref.model_id!r}: model_index.json unreadable: {exc}") from exc
        import diffusers

        pipeline_class = getattr(diffusers, index.get("_class_name", ""), None)
        if not isinstance(pipeline_class, type):
            raise ModelLoadFailed(f"model {ref.model_id!r}: unknown pipeline class {index.get('_class_name')!r}")
        comps: dict[str, tuple[str, str]] = {}
        extra: dict[str, Any] = {}
        sched: tuple[str, str] | None = None
        for name, value in index.items():
            if name.startswith("_"):
                continue
            if isinstance(value, list) and len(value) == 2:
                if value[0] is None:
                    extra[name] = None
                elif name == "scheduler":
                    sched = (value[0], value[1])
                else:
                    comps[name] = (value[0], value[1])
            else:
                extra[name] = value
        if sched is None:
            raise ModelLoadFailed(f"model {ref.model_id!r}: model_index.json names no scheduler")
        sched_cls = component_class(*sched)
        try:
            config = json.loads((ref.path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadFailed(f"model {ref.model_id!r}: scheduler config unreadable: {exc}") from exc
        return Recipe(pipeline_class, comps, sched_cls, config, extra)

    # ---- single files ------------------------------------------------------------------------

    @staticmethod
    def _single_key(ref: ModelRef, component: str, dtype: str) -> str:
        return fingerprint.of_file(ref.path, f"single:{component}:{dtype}")

    def _all_cached(self, ref: ModelRef, recipe: Recipe, dtype: str) -> bool:
        return all(self.memory.get(self._single_key(ref, n, dtype)) is not None for n in recipe.components)

    def _build_single_file(self, ref: ModelRef, dtype: str) -> tuple[LoadedPipeline, int]:
        from .single_file import load_single_file_pipeline

        try:
            pipe = load_single_file_pipeline(ref.path, self.runtime.torch_dtype(dtype))
        except ModelLoadFailed:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadFailed(f"model {ref.model_id!r}: single file could not be loaded: {type(exc).__name__}: {exc}") from exc
        comps: dict[str, tuple[str, str]] = {}
        objs: dict[str, Any] = {}
        keys: dict[str, str] = {}
        for name, obj in pipe.components.items():
            if obj is None or name == "scheduler" or not hasattr(obj, "save_pretrained"):
                continue
            key = self._single_key(ref, name, dtype)
            has_dtype = hasattr(obj, "parameters")
            entry = self.memory.put(
                CacheEntry(key, name, obj, module_bytes(obj), "cpu", dtype if has_dtype else "-", str(ref.path), {ref.model_id})
            )
            comps[name] = (type(obj).__module__.split(".")[0], type(obj).__name__)
            objs[name] = entry.obj
            keys[name] = key
        recipe = Recipe(type(pipe), comps, type(pipe.scheduler), dict(pipe.scheduler.config), {})
        self._recipes[str(ref.path)] = recipe
        return self._assemble(ref, recipe, objs, keys, dtype), len(keys)

    # ---- modes, schedulers, pins -----------------------------------------------------------------

    def for_mode(self, loaded: LoadedPipeline, mode: str) -> Any:
        """The pipeline class of `mode` over the same components (no reload, no second copy)."""
        if mode in loaded.modes:
            return loaded.modes[mode]
        pipe = loaded.pipe
        target = pipe if modes.is_mode(pipe, mode) else modes.auto_pipeline(mode).from_pipe(pipe)
        target.set_progress_bar_config(disable=True)
        loaded.modes[mode] = target
        return target

    @staticmethod
    def fresh_scheduler(loaded: LoadedPipeline, choice: schedulers.SchedulerChoice | None) -> Any:
        """A new scheduler per run, from the model's own config: no state or flag leaks between runs."""
        if choice is not None:
            return schedulers.build(choice, loaded.scheduler_config)
        # Not type(loaded.pipe.scheduler): an earlier run may have swapped that for another class.
        assert loaded.scheduler_class is not None
        return loaded.scheduler_class.from_config(loaded.scheduler_config)

    @contextmanager
    def use(self, ref: ModelRef, device: str, dtype: str, weights: str = FULL) -> Iterator[tuple[LoadedPipeline, LoadReport]]:
        """get() and pin its components for the length of a job (nothing evicts them meanwhile)."""
        with self._lock:
            loaded, report = self.get(ref, device, dtype, weights)
            pins = self.memory.pinned(loaded.keys.values())
            pins.__enter__()
        try:
            yield loaded, report
        finally:
            pins.__exit__(None, None, None)

    def set_memory_mode(self, loaded: LoadedPipeline, mode: str) -> list[str]:
        """Switch a resident pipeline (and its mode pipelines) to a lower-memory way of running."""
        with self._lock:
            pipes = [loaded.pipe, *[p for p in loaded.modes.values() if p is not loaded.pipe]]
            if loaded.offloaded:
                loaded.pipe.remove_all_hooks()
                self.memory.resync(loaded.keys.values())
            for p in pipes:
                p.disable_attention_slicing()
                vae = getattr(p, "vae", None)
                if vae is not None:
                    vae.disable_slicing()
                    vae.disable_tiling()
            applied: list[str] = []
            if mode in ("model_cpu_offload", "sequential_cpu_offload"):
                if not loaded.device.startswith("cuda"):
                    from ..errors import Unsupported

                    raise Unsupported(f"{mode} needs a CUDA device; {loaded.ref.model_id} runs on {loaded.device}")
                getattr(loaded.pipe, f"enable_{mode}")(device=loaded.device)
                loaded.modes = {}  # mode pipelines are rebuilt over the offloaded components
                applied.append(mode)
            elif mode == "attention_slicing":
                for p in pipes:
                    p.enable_attention_slicing()
                applied.append(mode)
            elif mode in ("vae_slicing", "vae_tiling"):
                vae = getattr(loaded.pipe, "vae", None)
                if vae is not None:
                    (vae.enable_slicing if mode == "vae_slicing" else vae.enable_tiling)()
                    applied.append(mode)
            loaded.memory_mode = mode
            self.memory.resync(loaded.keys.values())
            return applied

    # ---- unload / eviction -------------------------------------------------------------------------

    def _evicted(self, entry: CacheEntry) -> None:
        with self._lock:
            for key, lp in list(self._resident.items()):
                if entry.key in lp.keys.values():
                    log.info("pipeline of %s dropped: its %s left the cache", lp.ref.model_id, entry.component)
                    del self._resident[key]

    def unload(self, model_id: str | None = None, keep_in_ram: bool = False) -> dict[str, Any]:
        """Drop resident pipelines (of one model or all). keep_in_ram: weights stay in the RAM cache."""
        with self._lock:
            dropped = [lp for lp in self._resident.values() if model_id is None or lp.ref.model_id == model_id]
            for lp in dropped:
                self._resident = {k: v for k, v in self._resident.items() if v is not lp}
            still = {k for lp in self._resident.values() for k in lp.keys.values()}
            moved = freed = 0
            for lp in dropped:
                for key in lp.keys.values():
                    entry = self.memory.get(key)
                    if entry is None or key in still or entry.pins:
                        continue
                    if keep_in_ram:
                        if entry.device != "cpu":
                            self.memory.place([key], "cpu")
                            moved += entry.nbytes
                    else:
                        freed += entry.nbytes
                        entry.model_ids.discard(lp.ref.model_id)
                        if not entry.model_ids:
                            self.memory.clear_key(key)
        collect()
        return {"unloaded": [lp.ref.model_id for lp in dropped], "moved_to_ram_mb": round(moved / 2**20, 2), "freed_mb": round(freed / 2**20, 2)}

    def loaded(self) -> list[LoadedPipeline]:
        """The resident pipelines now. Takes no lock: a load holds it for seconds, and status answers
        must not wait for it (dict.copy is one step under the GIL; each value is a finished pipeline)."""
        return list(self._resident.copy().values())

    def find(self, model_id: str) -> list[LoadedPipeline]:
        return [lp for lp in self.loaded() if lp.ref.model_id == model_id]
