"""Loaded diffusers pipelines. One resident model for now; the model issue brings the real cache."""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..protocol.errors import ModelLoadFailed
from . import modes, schedulers
from .locator import ModelRef
from .runtime import Runtime

log = logging.getLogger(__name__)

_SD_FAMILY = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")


@dataclass
class LoadedPipeline:
    ref: ModelRef
    pipe: Any
    device: str
    dtype: str
    load_ms: float
    loaded_at: float = field(default_factory=time.time)
    runs: int = 0
    modes: dict[str, Any] = field(default_factory=dict)  # mode -> pipeline sharing these components
    scheduler_config: dict[str, Any] = field(default_factory=dict)  # as loaded, never mutated
    scheduler_class: type | None = None  # the model's own scheduler class, as loaded


class PipelineManager:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self._lock = threading.RLock()
        self._current: LoadedPipeline | None = None
        self.load_count = 0

    def get(self, ref: ModelRef, device: str, dtype: str) -> tuple[LoadedPipeline, bool]:
        """The pipeline for `ref` on `device`; (pipeline, True) when it had to be loaded now."""
        with self._lock:
            cur = self._current
            if cur is not None and cur.ref.path == ref.path and cur.device == device and cur.dtype == dtype:
                return cur, False
            self.unload()
            loaded = self._load(ref, device, dtype)
            self._current = loaded
            return loaded, True

    def _load(self, ref: ModelRef, device: str, dtype: str) -> LoadedPipeline:
        from diffusers import DiffusionPipeline

        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {"dtype": self.runtime.torch_dtype(dtype), "local_files_only": True}
        if ref.pipeline_class in _SD_FAMILY:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        try:
            pipe = DiffusionPipeline.from_pretrained(str(ref.path), **kwargs)
            pipe.set_progress_bar_config(disable=True)
            pipe.to(device)
        except Exception as exc:
            raise ModelLoadFailed(f"model {ref.model_id!r} could not be loaded: {type(exc).__name__}: {exc}") from exc
        self.load_count += 1
        ms = round((time.perf_counter() - t0) * 1000, 2)
        log.info("loaded %s (%s) on %s/%s in %.0f ms", ref.model_id, ref.pipeline_class, device, dtype, ms)
        return LoadedPipeline(
            ref, pipe, device, dtype, ms, scheduler_config=dict(pipe.scheduler.config), scheduler_class=type(pipe.scheduler)
        )

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

    def unload(self) -> None:
        with self._lock:
            if self._current is None:
                return
            log.info("unloading %s", self._current.ref.model_id)
            self._current = None
            gc.collect()
            torch = self.runtime.torch
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()

    def loaded(self) -> list[LoadedPipeline]:
        with self._lock:
            return [self._current] if self._current else []

