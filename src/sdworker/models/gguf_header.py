"""Read a .gguf file's tensor names, logical shapes and string metadata without touching the weights.

GGUF (llama.cpp's format) is how most quantized Flux / Wan / HiDream transformers are shared
(city96's Q8_0 ... Q2_K files). The `gguf` package parses it (diffusers needs the same package to
load one); it maps the file, so only the header pages are read. GGML lists dimensions innermost
first, so a logical (torch) shape is the reverse. Every malformed input ends in
:class:`GGUFHeaderError`, whose message a person can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..paths import open_regular
from .safetensors_header import HeaderError

GGUF_MAGIC = b"GGUF"


class GGUFHeaderError(HeaderError):
    """The file is not a readable GGUF file, or the gguf package is missing."""


@dataclass(frozen=True)
class GGUFHeader:
    shapes: dict[str, tuple[int, ...]]
    quant_types: dict[str, str]  # tensor -> GGML type name ("Q8_0", "F16", ...)
    metadata: dict[str, str] = field(default_factory=dict)  # the string-valued keys (general.architecture, ...)

    @property
    def quantization(self) -> str:
        """The most common non-float type: what a file name like "Q4_K_S" usually says."""
        counts: dict[str, int] = {}
        for t in self.quant_types.values():
            if t not in ("F32", "F16", "BF16"):
                counts[t] = counts.get(t, 0) + 1
        return max(counts, key=lambda t: counts[t]) if counts else "F16"


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse `path`'s GGUF header; GGUFHeaderError for anything that is not a readable GGUF file."""
    with open_regular(path) as fh:  # OSError (missing file, a FIFO, ...) stays an OSError
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFHeaderError(f"{os.fspath(path)!r} is not a GGUF file (it does not start with b'GGUF')")
    try:
        from gguf import GGUFReader
        from gguf.constants import GGUFValueType
    except ImportError as exc:
        raise GGUFHeaderError("GGUF files need the gguf package, which is not installed in this worker (pip install gguf)") from exc
    try:
        reader = GGUFReader(os.fspath(path))
        shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
        quant = {t.name: t.tensor_type.name for t in reader.tensors}
        metadata: dict[str, str] = {}
        for name, fld in reader.fields.items():
            if fld.types == [GGUFValueType.STRING]:
                metadata[name] = bytes(fld.parts[fld.data[0]]).decode("utf-8", "replace")
    except GGUFHeaderError:
        raise
    except Exception as exc:  # noqa: BLE001  (the reader raises ValueError, IndexError, struct errors, ...)
        raise GGUFHeaderError(f"{os.fspath(path)!r} is not a readable GGUF file: {type(exc).__name__}: {exc}") from exc
    return GGUFHeader(shapes, quant, metadata)
