"""model.*: discovery, metadata, loading components into the caches, memory, validation, benchmarks.

Everything here reads the disk, a device or the caches, so it runs on the worker lane, never on
the stdin reader: ping, status and cancel are answered while a checkpoint loads. Loading waits
for torch and shares the caches with running jobs under their locks; what a running job uses is
pinned, so a load never evicts it. validate_model, benchmark_model and compare_vaes run models,
so they are jobs on the device queue like generations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..lazy import built_once
from ..dispatch.registry import method
from ..dispatch.work import Work
from ..protocol.envelopes import Call

if TYPE_CHECKING:
    from ..interfaces.model_checks import ModelChecks
    from ..interfaces.models import ModelInterface
    from ..schemas.base import NoParams
    from ..schemas.models import BenchmarkParams, ClearCacheParams, CompareVaesParams, ListModelsParams, ListModelsResult, LoadComponentParams, LoadParams, MetadataParams, ModelRefParams, OptimizeModelParams, SearchParams, UnloadParams, UpdateMetadataParams, ValidateModelParams
    from ..interfaces.worker import WorkerInterface


class ModelInstructor:
    def __init__(self, models: Callable[[], "ModelInterface"], worker: "WorkerInterface"):
        self._models = models  # built on first use: the ready event never waits for it
        self.worker = worker

    @property
    def models(self) -> "ModelInterface":
        return self._models()

    @built_once
    def checks(self) -> "ModelChecks":
        from ..interfaces.model_checks import ModelChecks

        return ModelChecks(self.models)

    # ---- discovery -------------------------------------------------------------------------------

    @method("model.list_models", "models:ListModelsParams", "models:ListModelsResult")
    def list_models(self, params: ListModelsParams, call: Call) -> dict[str, Any]:
        """Every model in the models dirs with kind, base_model, format, path and size."""
        return self.models.list(params.kind, params.base_model, params.refresh)

    @method("model.search", "models:SearchParams", "models:ListModelsResult")
    def search(self, params: SearchParams, call: Call) -> dict[str, Any]:
        """Models whose id, file name or title hold every word of `query`, filtered by kind/base/format/size."""
        p = params
        return self.models.search(p.query, p.kind, p.base_model, p.format, p.min_size_mb, p.max_size_mb, p.limit)

    @method("model.get_model_info", "models:ModelRefParams", "models:ModelInfoResult")
    def get_model_info(self, params: ModelRefParams, call: Call) -> dict[str, Any]:
        """One model: listing fields, whether it is loaded, its cache entries, the user's sidecar metadata."""
        return self.models.info(params.model_id, params.kind)

    @method("model.get_metadata", "models:MetadataParams", "models:MetadataResult")
    def get_metadata(self, params: MetadataParams, call: Call) -> dict[str, Any]:
        """Header metadata (never the weights), detected architecture, SHA-256 and A1111 hashes."""
        return self.models.metadata(params.model_id, params.kind, params.hashes)

    @method("model.update_metadata", "models:UpdateMetadataParams", "models:UpdateMetadataResult")
    def update_metadata(self, params: UpdateMetadataParams, call: Call) -> dict[str, Any]:
        """Write user metadata to the sidecar JSON next to the model (never the model file)."""
        return self.models.update_metadata(params.model_id, params.kind, params.metadata, params.replace)

    @method("model.get_components", "models:ModelRefParams", "models:ComponentsResult")
    def get_components(self, params: ModelRefParams, call: Call) -> dict[str, Any]:
        """A checkpoint's components: class, size, cached or not, device, models sharing it."""
        return self.models.components(params.model_id)

    # ---- loading ---------------------------------------------------------------------------------

    @method("model.load_model", "models:LoadParams", "models:LoadModelResult")
    def load_model(self, params: LoadParams, call: Call) -> dict[str, Any]:
        """Load a checkpoint; device "ram" keeps it in the RAM cache only (a later run promotes it)."""
        return self.models.load_model(params.model_id, params.device, params.dtype)

    @method("model.unload_model", "models:UnloadParams", "models:UnloadResult")
    def unload_model(self, params: UnloadParams, call: Call) -> dict[str, Any]:
        """Drop a model's pipeline; keep_in_ram moves its weights to the RAM cache instead of freeing them."""
        return self.models.unload(params.model_id, params.keep_in_ram)

    @method("model.load_vae", "models:LoadParams", "models:LoadComponentsResult")
    def load_vae(self, params: LoadParams, call: Call) -> dict[str, Any]:
        """Load a standalone VAE (folder or single file), or a checkpoint's own VAE."""
        return self.models.load_vae(params.model_id, params.device, params.dtype)

    @method("model.load_unet", "models:LoadParams", "models:LoadComponentsResult")
    def load_unet(self, params: LoadParams, call: Call) -> dict[str, Any]:
        """Load a checkpoint's UNet (or transformer) alone."""
        return self.models.load_unet(params.model_id, params.device, params.dtype)

    @method("model.load_encoder", "models:LoadComponentParams", "models:LoadComponentsResult")
    def load_encoder(self, params: LoadComponentParams, call: Call) -> dict[str, Any]:
        """Load a checkpoint's text encoders (or the one `component` names)."""
        return self.models.load_encoder(params.model_id, params.component, params.device, params.dtype)

    @method("model.load_lora", "models:ModelRefParams", "models:LoadComponentsResult")
    def load_lora(self, params: ModelRefParams, call: Call) -> dict[str, Any]:
        """Read a LoRA into the RAM cache (applied per request by the generation methods)."""
        return self.models.load_lora(params.model_id)

    # ---- memory ----------------------------------------------------------------------------------

    @method("model.get_cache_status", "base:NoParams", "models:CacheStatusResult")
    def get_cache_status(self, params: NoParams, call: Call) -> dict[str, Any]:
        """Cache entries (component, models, device, bytes, last used, pinned) and totals against the budgets."""
        return self.models.cache_status()

    @method("model.get_vram_model_status", "base:NoParams", "models:VramStatusResult")
    def get_vram_model_status(self, params: NoParams, call: Call) -> dict[str, Any]:
        """Per GPU: total, free, allocated, budget and the models whose weights are on it."""
        return self.models.vram_status()

    @method("model.clear_cache", "models:ClearCacheParams", "models:ClearCacheResult")
    def clear_cache(self, params: ClearCacheParams, call: Call) -> dict[str, Any]:
        """Drop unpinned cache entries: all, or those of a model_id / component."""
        return self.models.clear_cache(params.model_id, params.component)

    @method("model.optimize_memory", "base:NoParams", "models:OptimizeMemoryResult")
    def optimize_memory(self, params: NoParams, call: Call) -> dict[str, Any]:
        """Offload idle GPU weights to RAM, collect garbage, return cached CUDA blocks."""
        return self.models.optimize_memory()

    @method("model.optimize_model", "models:OptimizeModelParams", "models:OptimizeModelResult")
    def optimize_model(self, params: OptimizeModelParams, call: Call) -> dict[str, Any]:
        """Run a loaded model in a lower-memory mode (cpu offload, slicing, tiling); auto picks by memory pressure."""
        return self.models.optimize_model(params.model_id, params.mode)

    # ---- jobs ------------------------------------------------------------------------------------

    def _job(self, call: Call, model_id: str | None, run: Any) -> Work:
        call.session_id = call.session_id or call.request_id
        return Work(run=run, model_id=model_id, device_id=self.worker.device_name("default"))

    @method("model.validate_model", "models:ValidateModelParams", "models:ValidateModelResult", job=True)
    def validate_model(self, params: ValidateModelParams, call: Call) -> Work:
        """File readable, header sane, architecture known, safe format; optionally loadable and a one-step smoke run."""
        self.models.item(params.model_id, params.kind)  # unknown ids answer at once
        return self._job(call, params.model_id, lambda ctx: self.checks.validate(ctx, params.model_id, params.kind, params.load, params.smoke))

    @method("model.benchmark_model", "models:BenchmarkParams", "models:BenchmarkResult", job=True)
    def benchmark_model(self, params: BenchmarkParams, call: Call) -> Work:
        """Cold load vs cached reload, steps/s at a size, peak memory; for a VAE encode/decode time."""
        self.models.item(params.model_id, params.kind)
        p = params
        return self._job(call, p.model_id, lambda ctx: self.checks.benchmark(ctx, p.model_id, p.kind, p.width, p.height, p.steps, p.repeats, p.device))

    @method("model.compare_vaes", "models:CompareVaesParams", "models:CompareVaesResult", job=True)
    def compare_vaes(self, params: CompareVaesParams, call: Call) -> Work:
        """Round-trip PSNR and SSIM of several VAEs on the request's images or a built-in set."""
        p = params
        return self._job(call, None, lambda ctx: self.checks.compare_vaes(ctx, p.vae_ids, p.images, p.size, p.device))
