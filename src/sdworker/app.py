"""Builds the services and the method table, then serves stdin until EOF, a stop signal or system.shutdown."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, BinaryIO

from . import PROTOCOL_VERSION, __version__
from .dispatch.dispatcher import Dispatcher
from .dispatch.registry import Registry
from .instructors.config import ConfigInstructor
from .instructors.inference import InferenceInstructor
from .instructors.model import ModelInstructor
from .instructors.postprocess import PostprocessInstructor
from .instructors.video import VideoInstructor
from .instructors.system import SystemInstructor
from .jobs.engine import JobEngine
from .jobs.sessions import SessionRegistry
from .managers.components import EncoderManager, TokenizerManager, UNetManager
from .managers.controlnet import ControlNetManager
from .managers.catalog import ModelCatalog
from .managers.locator import ModelLocator
from .managers.lora import LoRAManager
from .managers.memory import MB, MemoryManager
from .managers.pipelines import PipelineManager
from .managers.vae import VAEManager
from .managers.runtime import Runtime
from .protocol.envelopes import ready_event
from .protocol.framing import LineWriter, read_lines
from .lazy import built_once
from .settings import Settings
from .store.db import DB_FILE, Database
from .store.ledger import SessionLedger
from . import limits, stop_signals
from .protocol import events

from .interfaces.sessions import SessionInterface
from .interfaces.validation import RequestChecks
from .interfaces.worker import WorkerInterface

if TYPE_CHECKING:
    from .interfaces.batch import BatchInterface
    from .interfaces.generation import GenerationInterface
    from .interfaces.models import ModelInterface
    from .interfaces.presets import PresetInterface
    from .interfaces.prompts import PromptInterface
    from .interfaces.upscale import UpscaleInterface
    from .interfaces.video import VideoInterface
    from .store.presets import PresetStore

log = logging.getLogger(__name__)


def build_registry(app: "App") -> Registry:
    """Each instructor gets the interfaces it forwards to (the heavy ones as builders: built on first use)."""
    registry = Registry()
    worker = WorkerInterface(app.settings, app.runtime, app.engine, app.pipelines, registry, lambda: app.db.location, app.request_stop)
    sessions = SessionInterface(app.sessions, app.engine, app.ledger)
    checks = RequestChecks(lambda: app.generation, lambda: app.batch, lambda: app.video, lambda: app.upscale, worker.device_name)
    for instructor in (
        SystemInstructor(worker),
        InferenceInstructor(worker, sessions, lambda: app.generation, lambda: app.batch, lambda: app.prompts, checks, registry),
        ModelInstructor(lambda: app.models, worker),
        ConfigInstructor(app.preset_interface),
        PostprocessInstructor(lambda: app.upscale),
        VideoInstructor(lambda: app.video, worker),
    ):
        registry.add(instructor)
    return registry


class App:
    def __init__(self, settings: Settings, out: BinaryIO):
        self.settings = settings
        self.started = time.monotonic()
        self.writer = LineWriter(out)
        self.runtime = Runtime(settings)
        self.sessions = SessionRegistry()
        self.engine = JobEngine(self.sessions, settings.max_queue)
        self.catalog = ModelCatalog(settings.models_dirs)
        self.locator = ModelLocator(settings.models_dirs, self.catalog, settings.allow_pickle)
        self.memory = MemoryManager(
            int(settings.ram_budget_mb * MB) if settings.ram_budget_mb is not None else None,
            int(settings.vram_budget_mb * MB) if settings.vram_budget_mb is not None else None,
        )
        dtype_of = self.runtime.torch_dtype
        self.vaes = VAEManager(self.memory, dtype_of)
        self.unets = UNetManager(self.memory, dtype_of)
        self.encoders = EncoderManager(self.memory, dtype_of)
        self.tokenizers = TokenizerManager(self.memory, dtype_of)
        self.pipelines = PipelineManager(self.runtime, self.memory, [self.unets, self.vaes, self.encoders, self.tokenizers])
        self.loras = LoRAManager(self.memory, settings.allow_pickle)
        self.controlnets = ControlNetManager(self.memory, dtype_of)
        # sdworker.db under --data-dir (presets, the session ledger; by default the per-user data folder); in memory with none.
        # Opened on first use, never before the ready event.
        self.db = Database(settings.data_dir / DB_FILE if settings.data_dir else None)
        limits.configure(settings)  # prompt and input-image limits, read by schemas and the decoder
        events.configure(settings.protocol)  # --protocol jsonrpc: every event a JSON-RPC notification
        self.ledger = SessionLedger(self.db, settings.ledger_keep, settings.ledger_days)  # every job, in sdworker.db
        self.engine.ledger = self.ledger
        self.registry = build_registry(self)
        self.dispatcher = Dispatcher(
            self.registry,
            self.engine,
            self.writer,
            settings.events_per_second,
            settings.max_json_depth,
        )
        self._stop = threading.Event()
        self._stop_reason = "eof"
        self._cancel_running = settings.on_exit == "cancel"

    # The interfaces and the preset store import pydantic and the schemas: built on first use, so
    # the ready event (which waits only for the method table) never pays for them.

    @built_once
    def presets(self) -> "PresetStore":
        from .store.presets import PresetStore

        return PresetStore(self.db, self.locator)

    @built_once
    def preset_interface(self) -> "PresetInterface":
        from .interfaces.presets import PresetInterface

        return PresetInterface(lambda: self.presets, self.locator, self.settings)

    @built_once
    def models(self) -> "ModelInterface":
        from .interfaces.models import ModelInterface

        return ModelInterface(self.settings, self.runtime, self.catalog, self.locator, self.memory, self.pipelines, self.vaes, self.loras)

    @built_once
    def upscale(self) -> "UpscaleInterface":
        from .interfaces.upscale import UpscaleInterface

        return UpscaleInterface(self.settings, self.runtime, self.memory, self.catalog)

    @built_once
    def prompts(self) -> "PromptInterface":
        from .interfaces.prompts import PromptInterface

        return PromptInterface(self.locator, self.pipelines)

    @built_once
    def generation(self) -> "GenerationInterface":
        from .interfaces.generation import GenerationInterface

        return GenerationInterface(self.settings, self.runtime, self.locator, self.pipelines, self.presets, self.vaes, self.loras, controlnets=self.controlnets)

    @built_once
    def batch(self) -> "BatchInterface":
        from .interfaces.batch import BatchInterface

        return BatchInterface(self.generation)

    @built_once
    def video(self) -> "VideoInterface":
        from .interfaces.video import VideoInterface

        return VideoInterface(self.generation)

    def warm(self) -> None:
        """After the ready event: build what the first request would otherwise wait for."""
        try:
            self.generation, self.batch, self.video  # noqa: B018
            for spec in self.registry.specs():
                spec.params  # noqa: B018  (imports the schema modules)
        except Exception:  # noqa: BLE001  (a failure here shows again, as an answer, on first use)
            log.exception("warm-up failed")

    def request_stop(self, reason: str, cancel_running: bool = False) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
        self._cancel_running = self._cancel_running or cancel_running
        if reason != "eof":  # after EOF nothing new can arrive; what was sent before it still runs
            self.engine.accepting = False
        self._stop.set()

    def _read(self, stdin: BinaryIO) -> None:
        self.writer.defer_flushes_of(threading.current_thread())
        try:
            for line in read_lines(stdin, self.settings.max_line_bytes, on_wait=self.writer.flush):
                try:
                    self.dispatcher.handle_line(line)
                except Exception:  # one bad line never ends the loop
                    log.exception("unhandled error while handling a line")
                if self._stop.is_set() and self._stop_reason == "method":
                    return
        except Exception:  # the loop must never die silently: log, then shut down cleanly
            log.exception("input loop failed")
        finally:
            self.writer.defer_flushes_of(None)
            self.writer.flush()
        self.request_stop("eof")

    def serve(self, stdin: BinaryIO) -> int:
        stop_signals.route(self.request_stop)  # SIGTERM, SIGINT, SIGHUP: stop cleanly, as system.shutdown does
        jsonrpc = self.settings.protocol == "jsonrpc"
        self.writer.write(ready_event(__version__, PROTOCOL_VERSION, os.getpid(), self.registry.names(), jsonrpc))
        self.runtime.start()
        threading.Thread(target=self.warm, name="warm-up", daemon=True).start()
        self.ledger.start()  # after ready, on its own thread: earlier runs' active sessions -> interrupted
        reader = threading.Thread(target=self._read, args=(stdin,), name="stdin-reader", daemon=True)
        reader.start()
        while not self._stop.wait(0.25):
            pass
        reason = self._stop_reason
        log.info("shutting down (%s)", reason)
        if reason == "method":
            reader.join(5)
        self.dispatcher.finish_deferred()
        # EOF: the host sent these jobs and is waiting for them; a signal or shutdown: answer queued ones now.
        self.engine.close(drain=reason == "eof", cancel_running=self._cancel_running)
        self.engine.join()
        self.ledger.close()
        log.info("bye")
        return 0


def run(settings: Settings, out: BinaryIO, stdin: BinaryIO | None = None) -> int:
    app = App(settings, out)
    code = app.serve(stdin or sys.stdin.buffer)
    try:
        out.flush()
    except OSError:
        pass
    return code
