"""The torch runtime, imported in the background after the ready event.

Requests that need torch wait on `wait()`; everything else is answered while it loads.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from typing import Any

from ..errors import InternalError, ValidationFailed
from ..settings import Settings
from .optimize.compiled import use_cache_dir

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.torch: Any = None
        self.device: str = settings.device or "pending"
        self.dtype_name: str = settings.dtype
        self.import_seconds: float | None = None

    def start(self) -> None:
        threading.Thread(target=self._load, name="runtime-import", daemon=True).start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
            os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            # before torch: importing diffusers (with torchao) makes inductor settle on its /tmp default
            use_cache_dir(self.settings.data_dir)
            import diffusers  # noqa: F401  (the import is the point: pay for it now, not in a job)
            import torch
            from diffusers.utils import logging as dlog
            from transformers.utils import logging as tlog

            dlog.disable_progress_bar()
            tlog.disable_progress_bar()
            self.torch = torch
            self.device = self._pick_device(torch)
            self.dtype_name = self._pick_dtype(self.device)
        except BaseException as exc:  # noqa: BLE001  (reported to every request that needs torch)
            self._error = exc
            log.exception("torch/diffusers import failed")
        finally:
            self.import_seconds = round(time.perf_counter() - t0, 3)
            self._ready.set()
            log.info("runtime ready in %.2fs: device=%s dtype=%s", self.import_seconds, self.device, self.dtype_name)

    def _pick_device(self, torch: Any) -> str:
        want = self.settings.device
        if not want:
            return "cuda:0" if torch.cuda.is_available() else "cpu"
        if want == "cuda":
            want = "cuda:0"
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"--device {want} asked for, but CUDA is not available")
        return want

    def _pick_dtype(self, device: str) -> str:
        if self.settings.dtype in (None, "", "auto"):
            return "fp16" if device.startswith("cuda") else "fp32"
        return self.settings.dtype

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> None:
        if not self._ready.wait(timeout):
            raise InternalError("the torch runtime is still loading; try again shortly")
        if self._error is not None:
            raise InternalError(f"torch/diffusers could not be imported: {self._error}")

    def torch_dtype(self, name: str | None = None) -> Any:
        self.wait()
        key = name or self.dtype_name
        if key not in DTYPES:
            raise ValidationFailed(f"dtype {key!r} is not one of {', '.join(DTYPES)}", [{"path": "precision.dtype", "message": "unknown dtype"}])
        return getattr(self.torch, DTYPES[key])

    def device_ids(self) -> list[str]:
        self.wait()
        ids = ["cpu"]
        if self.torch.cuda.is_available():
            ids += [f"cuda:{i}" for i in range(self.torch.cuda.device_count())]
        return ids

    def devices(self) -> list[dict[str, Any]]:
        """Device descriptions in the host's shape (device_id, name, memory_total_mb, memory_free_mb)."""
        import psutil

        self.wait()
        vm = psutil.virtual_memory()
        out = [
            {
                "device_id": "cpu",
                "name": platform.processor() or platform.machine(),
                "type": "cpu",
                "memory_total_mb": round(vm.total / 2**20),
                "memory_free_mb": round(vm.available / 2**20),
                "cores": os.cpu_count(),
                "default": self.device == "cpu",
            }
        ]
        torch = self.torch
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                free, total = torch.cuda.mem_get_info(i)
                out.append(
                    {
                        "device_id": f"cuda:{i}",
                        "name": props.name,
                        "type": "cuda",
                        "memory_total_mb": round(total / 2**20),
                        "memory_free_mb": round(free / 2**20),
                        "compute_capability": f"{props.major}.{props.minor}",
                        "default": self.device == f"cuda:{i}",
                    }
                )
        return out

    def check_device(self, device_id: str | None) -> str:
        """The device a request asks for: "default" (the worker's device) or a device id.

        Checked against the real devices once torch has loaded; before that only by its form,
        and the job checks again when it starts, so no request ever waits on the import here.
        """
        if device_id in (None, "", "default"):
            return "default"
        assert device_id is not None
        norm = "cuda:0" if device_id in ("cuda", "gpu") else device_id
        known = self.device_ids() if self.ready and self._error is None else None
        plausible = norm == "cpu" or (norm.startswith("cuda:") and norm[5:].isdigit())
        if (known is not None and norm not in known) or not plausible:
            shown = ", ".join(known) if known is not None else "cpu, cuda, cuda:N"
            raise ValidationFailed(
                f"device {device_id!r} is not available; devices: {shown}",
                [{"path": "device_id", "message": "unknown device"}],
            )
        return "default" if self.ready and norm == self.device else norm

    def device_name(self, key: str) -> str:
        """The real device id behind a request's device (the default device once torch has loaded)."""
        if key == "default":
            return self.device if self.ready else (self.settings.device or "default")
        return key

    def reset_peak(self, device: str) -> None:
        if device.startswith("cuda"):
            self.torch.cuda.reset_peak_memory_stats(device)

    def peak_vram_mb(self, device: str) -> float | None:
        if device.startswith("cuda"):
            return round(self.torch.cuda.max_memory_allocated(device) / 2**20, 1)
        return None

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self.ready, "device": self.device, "dtype": self.dtype_name, "import_seconds": self.import_seconds}
        if self.ready and self.torch is not None:
            import diffusers

            out["torch"] = self.torch.__version__
            out["diffusers"] = diffusers.__version__
            out["cuda_available"] = bool(self.torch.cuda.is_available())
        if self._error is not None:
            out["error"] = str(self._error)
        return out


class RssSampler:
    """Peak RSS of the process over a job, sampled at step boundaries and phase changes."""

    def __init__(self) -> None:
        import psutil

        self._error = psutil.Error
        self._proc = psutil.Process()
        self.peak = 0

    def sample(self) -> None:
        try:
            rss = self._proc.memory_info().rss
        except self._error:
            return
        if rss > self.peak:
            self.peak = rss

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)
