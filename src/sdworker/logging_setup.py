"""Logs go to stderr, as text or JSON lines; never to stdout.

Optional packages log alarming but harmless lines when they are imported (torchao's prebuilt CUDA
kernels that a CPU-only torch cannot load, "Detected no triton", ...). quiet_optional_imports()
demotes exactly those lines to DEBUG, so a normal start is quiet and --log-level DEBUG still shows them.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


#: (logger, start of the message) of lines optional packages log at import and that need no action.
QUIET_AT_IMPORT: tuple[tuple[str, str], ...] = (
    ("torchao", "Failed to load "),  # torchao's _C_mxfp8 / _C_cutlass .so: CUDA kernels this torch cannot load
    ("torchao", "Skipping import of cpp extensions"),
    ("torchao.kernel.intmm", "Warning: Detected no triton"),  # CPU-only machines have no triton
    ("torch.utils._pytree", "<enum "),  # torchao registers Enums the deprecated way
    ("diffusers.quantizers.torchao.torchao_quantizer", "Unable to import `torchao` Tensor objects"),
    ("transformers.utils.import_utils", "`"),  # "`CLIPImageProcessor` requires torchvision (not installed); falling back..."
)
_QUIET_MARKERS: dict[str, tuple[str, ...]] = {}
for _name, _start in QUIET_AT_IMPORT:
    _QUIET_MARKERS[_name] = _QUIET_MARKERS.get(_name, ()) + (_start,)


class _DemoteImportNoise(logging.Filter):
    """Turns one logger's known import-time warnings into DEBUG records (dropped unless DEBUG is on)."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING or record.levelno < logging.INFO:
            return True
        message = record.getMessage()
        if not message.startswith(self.starts):
            return True
        if message.startswith("`") and "requires torchvision" not in message:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_optional_imports() -> None:
    """Install the filters (idempotent); call before torch, diffusers or torchao are imported."""
    for name, starts in _QUIET_MARKERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DemoteImportNoise) for f in logger.filters):
            logger.addFilter(_DemoteImportNoise(starts))


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.captureWarnings(True)
    quiet_optional_imports()
