"""Jobs that exercise a model: validate_model, benchmark_model, compare_vaes.

They run on the device queue like generations, so they never overlap GPU work.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..jobs.context import JobContext
from ..families import Family, for_base_model
from ..managers import transformer_files
from ..managers.memory import MB
from ..errors import WorkerError, placed

if TYPE_CHECKING:
    from .models import ModelInterface


def _check(checks: list[dict[str, Any]], name: str, ok: bool, message: str) -> bool:
    checks.append({"name": name, "ok": ok, "message": message})
    return ok


def _family(loaded: Any) -> Family:
    """The family of a loaded model (the base Family's rules for one no family generates with)."""
    return for_base_model(loaded.ref.base_model) or Family()


class ModelChecks:
    def __init__(self, models: "ModelInterface"):
        self.models = models

    # ---- validate -----------------------------------------------------------------------------

    def validate(self, ctx: JobContext, model_id: str, kind: str | None, load: bool, smoke: bool) -> dict[str, Any]:
        checks: list[dict[str, Any]] = []
        item = self.models.item(model_id, kind)
        ok = _check(checks, "exists", item.path.exists(), str(item.path))
        if ok and item.path.is_file():
            try:
                with open(item.path, "rb") as fh:
                    fh.read(8)
                _check(checks, "readable", True, f"{item.size_bytes} bytes")
            except OSError as exc:
                ok = _check(checks, "readable", False, str(exc))
        if ok:
            try:
                meta = self.models.metadata(item.model_id, item.kind, hashes=False)
                _check(checks, "header", True, f"{meta.get('tensor_count') or 'folder'} tensors, format {meta['format']}")
            except WorkerError as exc:
                ok = _check(checks, "header", False, placed(exc, "data")[0])
        if ok:
            ok = _check(checks, "architecture", item.base_model != "unknown" or item.kind == "upscaler", f"{item.kind}, {item.base_model}")
        if ok and item.pickle:
            ok = _check(checks, "safe_format", self.models.settings.allow_pickle, "pickle file: needs --allow-pickle" if not self.models.settings.allow_pickle else "pickle allowed (weights_only)")
        if ok and (load or smoke) and (item.kind == "checkpoint" or transformer_files.runs_alone(item)):
            try:
                t0 = time.perf_counter()
                ref = self.models.checkpoint_ref(item.model_id)
                ctx.set_status("loading")
                loaded, report = self.models.pipelines.get(ref, self.models.device(None), self.models.dtype(None))
                _check(checks, "loadable", True, f"{report.ms:.0f} ms ({'disk' if report.fresh else 'cache'})")
                if smoke:
                    ctx.set_status("running")
                    self._smoke(loaded)
                    _check(checks, "smoke", True, f"one step at 64x64 in {(time.perf_counter() - t0) * 1000:.0f} ms")
            except WorkerError as exc:
                _check(checks, "loadable" if not any(c["name"] == "loadable" for c in checks) else "smoke", False, placed(exc, "data")[0])
            except Exception as exc:  # noqa: BLE001  (a broken model is a finding, not a crash)
                _check(checks, "smoke", False, f"{type(exc).__name__}: {exc}")
        elif ok and (load or smoke) and item.kind == "vae":
            try:
                self.models.load_vae(item.model_id, None, None)
                _check(checks, "loadable", True, "VAE loaded")
            except WorkerError as exc:
                _check(checks, "loadable", False, placed(exc, "data")[0])
        valid = all(c["ok"] for c in checks)
        return {"model_id": item.model_id, "kind": item.kind, "base_model": item.base_model, "valid": valid, "checks": checks}

    def _smoke(self, loaded: Any) -> None:
        torch = self.models.runtime.torch
        with self.models.pipelines.memory.pinned(loaded.keys.values()), torch.inference_mode():
            probe = _family(loaded).probe_kwargs(loaded.pipe, 64, 64)
            loaded.pipe(prompt="smoke test", num_inference_steps=1, generator=torch.Generator("cpu").manual_seed(0), output_type="latent", **probe)

    # ---- benchmark ----------------------------------------------------------------------------

    def benchmark(self, ctx: JobContext, model_id: str, kind: str | None, width: int, height: int, steps: int, repeats: int, device: str | None) -> dict[str, Any]:
        item = self.models.loadable(self.models.item(model_id, kind))
        if item.kind == "vae":
            return self._bench_vae(ctx, item, width, height, repeats, device)
        ref = self.models.checkpoint_ref(item.model_id)
        dev, dtype = self.models.device(device), self.models.dtype(None)
        runtime, pipelines = self.models.runtime, self.models.pipelines
        ctx.set_status("loading")
        # cold: this model's weights dropped from the caches first (other models keep theirs)
        pipelines.unload(ref.model_id, keep_in_ram=False)
        self.models.memory.clear(ref.model_id)
        t0 = time.perf_counter()
        loaded, report = pipelines.get(ref, dev, dtype)
        cold_ms = (time.perf_counter() - t0) * 1000
        pipelines.unload(ref.model_id, keep_in_ram=True)
        t1 = time.perf_counter()
        loaded, _ = pipelines.get(ref, dev, dtype)
        cached_ms = (time.perf_counter() - t1) * 1000
        ctx.set_status("running")
        torch = runtime.torch
        runtime.reset_peak(dev)
        times = []
        probe = _family(loaded).probe_kwargs(loaded.pipe, width, height)
        with pipelines.memory.pinned(loaded.keys.values()), torch.inference_mode():
            for i in range(repeats):
                ctx.check_cancelled()
                t = time.perf_counter()
                loaded.pipe(prompt="benchmark", num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(i), output_type="latent", **probe)
                times.append(time.perf_counter() - t)
        best = min(times)
        return {
            "model_id": ref.model_id,
            "device": dev,
            "dtype": dtype,
            "cold_load_ms": round(cold_ms, 2),
            "components_read": report.disk_reads,
            "cached_reload_ms": round(cached_ms, 2),
            "cached_speedup": round(cold_ms / cached_ms, 1) if cached_ms > 0 else None,
            "width": width,
            "height": height,
            "steps": steps,
            "seconds_per_run": [round(t, 4) for t in times],
            "steps_per_second": round(steps / best, 3),
            "peak_vram_mb": runtime.peak_vram_mb(dev),
            "model_mb": round(sum(e.nbytes for k in loaded.keys.values() if (e := self.models.memory.get(k))) / MB, 2),
        }

    def _bench_vae(self, ctx: JobContext, item: Any, width: int, height: int, repeats: int, device: str | None) -> dict[str, Any]:
        dev, dtype = self.models.device(device), self.models.dtype(None)
        runtime = self.models.runtime
        torch = runtime.torch
        t0 = time.perf_counter()
        entry = self.models.vaes.load_standalone(item.path, item.model_id, dtype, item.base_model)
        load_ms = (time.perf_counter() - t0) * 1000
        self.models.memory.place([entry.key], dev)
        vae = entry.obj
        ctx.set_status("running")
        x = torch.rand(1, 3, height, width, generator=torch.Generator("cpu").manual_seed(0)).mul(2).sub(1).to(dev, next(vae.parameters()).dtype)
        runtime.reset_peak(dev)
        enc, dec = [], []
        with self.models.memory.pinned([entry.key]), torch.inference_mode():
            for _ in range(repeats):
                ctx.check_cancelled()
                t = time.perf_counter()
                lat = vae.encode(x).latent_dist.mode()
                _sync(torch, dev)
                enc.append(time.perf_counter() - t)
                t = time.perf_counter()
                vae.decode(lat)
                _sync(torch, dev)
                dec.append(time.perf_counter() - t)
        return {
            "model_id": item.model_id,
            "kind": "vae",
            "device": dev,
            "dtype": dtype,
            "load_ms": round(load_ms, 2),
            "width": width,
            "height": height,
            "encode_ms": round(min(enc) * 1000, 2),
            "decode_ms": round(min(dec) * 1000, 2),
            "peak_vram_mb": runtime.peak_vram_mb(dev),
            "vae_mb": round(entry.nbytes / MB, 2),
        }

    # ---- compare VAEs -------------------------------------------------------------------------

    def compare_vaes(self, ctx: JobContext, vae_ids: list[str], images: list[str], size: int, device: str | None) -> dict[str, Any]:
        from ..managers import vae_quality
        from ..managers.images_in import decode_image

        dev, dtype = self.models.device(device), self.models.dtype(None)
        s = self.models.settings
        roots = [r for r in (s.output_dir, *s.input_dirs) if r is not None]
        pics = [decode_image(v, f"images[{i}]", roots).convert("RGB").resize((size, size)) for i, v in enumerate(images)] if images else vae_quality.builtin_images(size)
        ctx.set_status("running")
        rows = []
        for vid in vae_ids:
            ctx.check_cancelled()
            entry = self._vae_entry(vid, dtype)
            self.models.memory.place([entry.key], dev)
            with self.models.memory.pinned([entry.key]):
                t = time.perf_counter()
                scores = vae_quality.score(entry.obj, pics, dev)
            rows.append({"vae_id": vid, **scores, "seconds": round(time.perf_counter() - t, 3)})
        ranked = sorted(rows, key=lambda r: (-(r["ssim"] or 0), -(r["psnr"] or 0)))
        return {"images": len(pics), "size": size, "device": dev, "dtype": dtype, "results": rows, "best": ranked[0]["vae_id"]}

    def _vae_entry(self, vid: str, dtype: str) -> Any:
        if vid.startswith("model:"):
            out = self.models.load_vae(vid.split(":", 1)[1], "ram", dtype)
            return self.models.memory.get(out["components"][0]["key"])
        item = self.models.loadable(self.models.item(vid, "vae", "vae_ids"))
        return self.models.vaes.load_standalone(Path(item.path), item.model_id, dtype, item.base_model)


def _sync(torch: Any, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
