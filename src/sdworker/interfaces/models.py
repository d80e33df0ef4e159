"""ModelInterface: what the model.* methods do, over the catalog, the component managers and the caches."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..managers.catalog import CatalogItem
from ..managers.locator import ModelRef, pickle_refused
from ..managers.memory import MB, CacheEntry, collect
from ..errors import ModelLoadFailed, Unsupported, ValidationFailed, WorkerError

if TYPE_CHECKING:
    from ..managers.catalog import ModelCatalog
    from ..managers.lora import LoRAManager
    from ..managers.locator import ModelLocator
    from ..managers.memory import MemoryManager
    from ..managers.pipelines import PipelineManager
    from ..managers.runtime import Runtime
    from ..managers.vae import VAEManager
    from ..settings import Settings

_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / MB, 1)


class ModelInterface:
    def __init__(
        self,
        settings: "Settings",
        runtime: "Runtime",
        catalog: "ModelCatalog",
        locator: "ModelLocator",
        memory: "MemoryManager",
        pipelines: "PipelineManager",
        vaes: "VAEManager",
        loras: "LoRAManager",
    ):
        self.settings = settings
        self.runtime = runtime
        self.catalog = catalog
        self.locator = locator
        self.memory = memory
        self.pipelines = pipelines
        self.vaes = vaes
        self.loras = loras
        self._hash_cache: Any = None

    # ---- discovery and metadata ----------------------------------------------------------------

    @property
    def hash_cache(self) -> Any:
        if self._hash_cache is None:
            from ..managers.infotext import hash_cache_for  # the one the infotext's hashes use too

            self._hash_cache = hash_cache_for(self.settings.data_dir)
        return self._hash_cache

    def list(self, kind: str | None, base_model: str | None, refresh: bool) -> dict[str, Any]:
        items = [
            i.public()
            for i in self.catalog.items(refresh)
            if (kind is None or i.kind == kind) and (base_model is None or i.base_model == base_model)
        ]
        return {"items": items, "count": len(items)}

    def search(self, query: str | None, kind: str | None, base_model: str | None, fmt: str | None, min_mb: float | None, max_mb: float | None, limit: int) -> dict[str, Any]:
        found = self.catalog.search(query, kind, base_model, fmt, min_mb, max_mb, limit)
        return {"items": [i.public() for i in found], "count": len(found)}

    def item(self, model_id: str, kind: str | None = None, field: str = "model_id") -> CatalogItem:
        return self.catalog.find(model_id, kind, field)

    @staticmethod
    def readable(item: CatalogItem, field: str = "model_id") -> CatalogItem:
        """The item, unless its file could not even be inspected: then model_load_failed with why."""
        if item.kind == "unknown" and item.details.get("error"):
            raise ModelLoadFailed(f"{field}: {item.model_id!r} was found at {item.path} but cannot be read: {item.details['error']}", [{"path": field, "message": "found, but unreadable"}])
        return item

    def loadable(self, item: CatalogItem, field: str = "model_id") -> CatalogItem:
        if item.pickle and not self.settings.allow_pickle:
            raise pickle_refused(item.model_id, field)
        return self.readable(item, field)

    def info(self, model_id: str, kind: str | None) -> dict[str, Any]:
        item = self.item(model_id, kind)
        out = item.public()
        resident = [lp for lp in self.pipelines.loaded() if Path(lp.ref.source) == item.path]
        out["loaded"] = bool(resident)
        out["pipelines"] = [lp.describe(self.memory) for lp in resident]
        out["cache_entries"] = [e.describe() for e in self.memory.entries() if item.model_id in e.model_ids]
        from ..models import sidecar

        try:
            out["user_metadata"] = sidecar.read(item.path, item.root)
        except WorkerError:
            raise  # unsafe_path: a sidecar linking out of the models dir is not read
        except Exception as exc:  # noqa: BLE001
            out["user_metadata"], out["user_metadata_error"] = {}, str(exc)
        return out

    def metadata(self, model_id: str, kind: str | None, hashes: bool) -> dict[str, Any]:
        from ..models.info import inspect_path

        item = self.item(model_id, kind)
        try:
            out = inspect_path(item.path, self.hash_cache, with_hashes=hashes, root=item.root)
        except WorkerError:
            raise
        except Exception as exc:  # noqa: BLE001  (a corrupt header is the host's problem to see, not ours)
            raise ModelLoadFailed(f"{item.model_id}: cannot read its metadata: {exc}") from exc
        out["model_id"] = item.model_id
        return out

    def update_metadata(self, model_id: str, kind: str | None, metadata: dict[str, Any], replace: bool) -> dict[str, Any]:
        from ..models import sidecar

        item = self.item(model_id, kind)
        try:
            merged = sidecar.update(item.path, metadata, replace=replace, root=item.root)
        except sidecar.SidecarError as exc:
            raise ValidationFailed(f"metadata: {exc}", [{"path": "metadata", "message": str(exc)}]) from exc
        return {"model_id": item.model_id, "sidecar_path": str(sidecar.sidecar_path(item.path)), "metadata": merged}

    def components(self, model_id: str) -> dict[str, Any]:
        item = self.item(model_id)
        comps: list[dict[str, Any]] = []
        if item.format == "diffusers" and (item.path / "model_index.json").is_file():
            import json

            index = json.loads((item.path / "model_index.json").read_text(encoding="utf-8"))
            for name, value in sorted(index.items()):
                if name.startswith("_") or not (isinstance(value, list) and len(value) == 2 and value[0]):
                    continue
                sub = item.path / name
                size = sum(f.stat().st_size for f in sub.rglob("*") if f.is_file()) if sub.is_dir() else 0
                comps.append({"name": name, "library": value[0], "class": value[1], "size_bytes": size})
        cached = {e.component: e for e in self.memory.entries() if item.model_id in e.model_ids}
        for c in comps:
            e = cached.get(c["name"])
            c["cached"] = e is not None
            c["device"] = e.device if e else None
            c["shared_with"] = sorted(e.model_ids - {item.model_id}) if e else []
        if not comps:  # single files: what was split out of it when it was loaded
            comps = [{"name": n, "cached": True, "device": e.device, "size_bytes": e.nbytes, "shared_with": sorted(e.model_ids - {item.model_id})} for n, e in cached.items()]
        return {"model_id": item.model_id, "kind": item.kind, "format": item.format, "components": comps}

    # ---- loading ------------------------------------------------------------------------------

    def device(self, name: str | None) -> str:
        """"ram" stays "ram"; anything else is checked and made a real device id."""
        if name == "ram":
            return "ram"
        runtime = self.runtime
        runtime.wait()
        return runtime.device_name(runtime.check_device(name))

    def dtype(self, name: str | None) -> str:
        self.runtime.wait()
        return name or self.runtime.dtype_name

    def checkpoint_ref(self, model_id: str) -> ModelRef:
        return self.locator.resolve(model_id)

    def load_model(self, model_id: str, device: str | None, dtype: str | None) -> dict[str, Any]:
        ref = self.checkpoint_ref(model_id)
        dev, dt = self.device(device), self.dtype(dtype)
        loaded, report = self.pipelines.get(ref, dev, dt)
        return {
            "model_id": ref.model_id,
            "device": dev,
            "dtype": dt,
            "load_ms": report.ms,
            "loaded_from": "disk" if report.fresh else "cache",
            "components_read": report.disk_reads,
            "pipeline": loaded.describe(self.memory),
        }

    def _component_entries(self, model_id: str, names: tuple[str, ...], device: str | None, dtype: str | None) -> dict[str, Any]:
        """Load some components of a checkpoint (a single file loads whole) and place them."""
        ref = self.checkpoint_ref(model_id)
        dev, dt = self.device(device), self.dtype(dtype)
        t0 = time.perf_counter()
        entries: list[CacheEntry] = []
        if ref.format == "single_file" or ref.transformer_file is not None:  # its parts come from more than one place
            loaded, _ = self.pipelines.get(ref, "ram", dt)
            entries = [e for n, k in loaded.keys.items() if n in names and (e := self.memory.get(k)) is not None]
        else:
            recipe_index = ref.path / "model_index.json"
            import json

            index = json.loads(recipe_index.read_text(encoding="utf-8"))
            for name in names:
                spec = index.get(name)
                if not (isinstance(spec, list) and len(spec) == 2 and spec[0]):
                    continue
                entries.append(self.pipelines.manager_for(name).load(ref.path / name, spec[0], spec[1], dt, ref.model_id, name))
        if not entries:
            raise ValidationFailed(f"model {ref.model_id!r} has none of {', '.join(names)}", [{"path": "component", "message": "not in this model"}])
        if dev != "ram":
            self.memory.place([e.key for e in entries], dev)
        return {
            "model_id": ref.model_id,
            "device": dev,
            "dtype": dt,
            "load_ms": round((time.perf_counter() - t0) * 1000, 2),
            "components": [e.describe() for e in entries],
        }

    def load_unet(self, model_id: str, device: str | None, dtype: str | None) -> dict[str, Any]:
        return self._component_entries(model_id, ("unet", "transformer"), device, dtype)

    def load_encoder(self, model_id: str, component: str | None, device: str | None, dtype: str | None) -> dict[str, Any]:
        if component is not None and component not in _ENCODERS:
            raise ValidationFailed(f"component: {component!r} is not one of {', '.join(_ENCODERS)}", [{"path": "component", "message": "not a text encoder"}])
        return self._component_entries(model_id, (component,) if component else _ENCODERS, device, dtype)

    def load_vae(self, model_id: str, device: str | None, dtype: str | None) -> dict[str, Any]:
        item = self.readable(self.item(model_id))
        if item.kind == "checkpoint":
            return self._component_entries(model_id, ("vae",), device, dtype)
        if item.kind != "vae":
            raise ValidationFailed(f"model_id: {item.model_id!r} is a {item.kind}, not a VAE", [{"path": "model_id", "message": f"a {item.kind}"}])
        self.loadable(item)
        dev, dt = self.device(device), self.dtype(dtype)
        t0 = time.perf_counter()
        entry = self.vaes.load_standalone(item.path, item.model_id, dt, item.base_model)
        if dev != "ram":
            self.memory.place([entry.key], dev)
        return {"model_id": item.model_id, "device": dev, "dtype": dt, "load_ms": round((time.perf_counter() - t0) * 1000, 2), "components": [entry.describe()]}

    def load_lora(self, model_id: str) -> dict[str, Any]:
        item = self.loadable(self.item(model_id, "lora"))
        t0 = time.perf_counter()
        entry = self.loras.load(item.path, item.model_id, item.base_model)
        return {"model_id": item.model_id, "base_model": item.base_model, "device": "ram", "load_ms": round((time.perf_counter() - t0) * 1000, 2), "tensors": len(entry.obj), "components": [entry.describe()]}

    def unload(self, model_id: str | None, keep_in_ram: bool) -> dict[str, Any]:
        if model_id is not None:
            self.item(model_id)  # unknown ids are an error, not a silent no-op
            model_id = self.item(model_id).model_id
        return self.pipelines.unload(model_id, keep_in_ram)

    # ---- memory -------------------------------------------------------------------------------

    def cache_status(self) -> dict[str, Any]:
        out = self.memory.status()
        out["pipelines"] = [lp.describe(self.memory) for lp in self.pipelines.loaded()]
        out["rss_mb"] = _rss_mb()
        return out

    def vram_status(self) -> dict[str, Any]:
        """Models resident per compute device: every CUDA device, then "cpu" (the RAM cache), one row shape."""
        import psutil

        runtime = self.runtime
        runtime.wait()
        torch = runtime.torch
        entries = self.memory.entries()

        def row(dev: str, total: int, free: int, allocated: int, reserved: int, budget: int | None) -> dict[str, Any]:
            mine = [e.describe() for e in entries if e.device == dev]
            return {
                "device_id": dev,
                "total_mb": round(total / MB, 1),
                "free_mb": round(free / MB, 1),
                "allocated_mb": round(allocated / MB, 1),
                "reserved_mb": round(reserved / MB, 1),
                "budget_mb": round(budget / MB, 1) if budget is not None else None,
                "cached_mb": round(sum(e["bytes"] for e in mine) / MB, 2),
                "models": sorted({m for e in mine for m in e["model_ids"]}),
                "entries": mine,
            }

        devices = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                dev = f"cuda:{i}"
                free, total = torch.cuda.mem_get_info(i)
                alloc, reserved = torch.cuda.memory_allocated(i), torch.cuda.memory_reserved(i)
                devices.append(row(dev, total, free, alloc, reserved, self.memory.vram_budget_for(dev)))
        ram, rss = psutil.virtual_memory(), psutil.Process().memory_info().rss
        # on "cpu", allocated and reserved are the worker's resident set; the budget is the RAM cache's
        devices.append(row("cpu", ram.total, ram.available, rss, rss, self.memory.ram_budget))
        return {"cuda_available": bool(torch.cuda.is_available()), "devices": devices}

    def clear_cache(self, model_id: str | None, component: str | None) -> dict[str, Any]:
        if model_id is not None:
            model_id = self.item(model_id).model_id
        return self.memory.clear(model_id, component)

    def optimize_memory(self) -> dict[str, Any]:
        before_vram = self.memory.used("vram")
        rss_before = _rss_mb()
        moved = self.memory.offload_idle()
        collect()
        return {
            "offloaded_to_ram_mb": round(moved / MB, 2),
            "vram_cached_mb": {"before": round(before_vram / MB, 2), "after": round(self.memory.used("vram") / MB, 2)},
            "rss_mb": {"before": rss_before, "after": _rss_mb()},
        }

    def optimize_model(self, model_id: str, mode: str) -> dict[str, Any]:
        ref = self.checkpoint_ref(model_id)
        resident = self.pipelines.find(ref.model_id)
        if not resident:
            raise ValidationFailed(f"model {ref.model_id!r} is not loaded; model.load_model it first", [{"path": "model_id", "message": "not loaded"}])
        chosen = self._auto_mode(resident[0]) if mode == "auto" else mode
        applied = []
        for lp in resident:
            applied = self.pipelines.set_memory_mode(lp, chosen)
        return {"model_id": ref.model_id, "mode": chosen, "applied": applied}

    def _auto_mode(self, lp: Any) -> str:
        """Given memory pressure: offload when the model does not fit the free VRAM, tile when it is tight."""
        size = sum(e.nbytes for k in lp.keys.values() if (e := self.memory.get(k)) is not None)
        if lp.device.startswith("cuda"):
            free, _ = self.runtime.torch.cuda.mem_get_info(lp.device)
            if free < 0.25 * size:
                return "sequential_cpu_offload"
            if free < size:
                return "model_cpu_offload"
            return "vae_tiling" if free < 2 * 2**30 else "none"
        import psutil

        return "attention_slicing" if psutil.virtual_memory().available < 2 * size else "none"

    def require_cuda(self, device: str, what: str) -> None:
        if not device.startswith("cuda"):
            raise Unsupported(f"{what} needs a CUDA device; this model runs on {device}")
