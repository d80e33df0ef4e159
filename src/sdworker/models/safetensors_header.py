"""Read a .safetensors header (names, dtypes, shapes, metadata) without touching the weights.

The format is an 8-byte little-endian u64 ``N``, then ``N`` bytes of UTF-8 JSON, then the raw
tensor data. Model files come from anywhere, so every malformed input ends in one exception
class, :class:`HeaderError`, whose message a person can act on; nothing else escapes for bad
bytes (I/O errors such as a missing file stay ``OSError``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from ..paths import open_regular

#: Largest header we are willing to read. Real checkpoints have ~100-300 KB headers; the
#: reference implementation caps at 100 MB as well.
MAX_HEADER_BYTES = 100_000_000


class HeaderError(ValueError):
    """The file is not a readable safetensors file (truncated, garbage, or malformed header)."""


class TensorInfo(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    header_size: int = 0  # N, the JSON length
    file_size: int | None = None

    @property
    def data_start(self) -> int:
        """Byte offset of the tensor data (what kohya/A1111's "addnet" hash starts from)."""
        return 8 + self.header_size

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: info.shape for name, info in self.tensors.items()}


def read_header(source: str | os.PathLike[str] | BinaryIO) -> SafetensorsHeader:
    """Parse the header of a path or a seekable binary file object (read from offset 0)."""
    if isinstance(source, (str, os.PathLike)):
        with open_regular(source) as fh:  # a FIFO named *.safetensors is refused, never waited on
            return _read(fh)
    return _read(source)


def parse_header_bytes(data: bytes, file_size: int | None = None) -> SafetensorsHeader:
    """Parse a header from the start of a file; ``file_size`` defaults to ``len(data)`` (whole file)."""
    size = len(data) if file_size is None else file_size
    if len(data) < 8:
        raise HeaderError(f"file too small for a safetensors header ({len(data)} bytes, need at least 8)")
    n = int.from_bytes(data[:8], "little")
    _check_length(n, size)
    if len(data) < 8 + n:
        raise HeaderError(f"only {len(data) - 8} of the {n} header bytes were given")
    return _parse_json(data[8 : 8 + n], n, size)


def _read(fh: BinaryIO) -> SafetensorsHeader:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(0)
    head = fh.read(8)
    if len(head) < 8:
        raise HeaderError(f"file too small for a safetensors header ({size} bytes, need at least 8)")
    n = int.from_bytes(head, "little")
    _check_length(n, size)
    raw = fh.read(n)
    if len(raw) != n:
        raise HeaderError(f"file truncated while reading the {n}-byte header")
    return _parse_json(raw, n, size)


def _check_length(n: int, size: int) -> None:
    if n > MAX_HEADER_BYTES:
        raise HeaderError(
            f"header length {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit; not a safetensors file?"
        )
    if n > size - 8:
        raise HeaderError(f"header length {n} bytes is larger than the file ({size} bytes); truncated or not safetensors")
    if n < 2:
        raise HeaderError(f"header length {n} bytes is too small to hold a JSON object")


def _parse_json(raw: bytes, n: int, size: int) -> SafetensorsHeader:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise HeaderError(f"header is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise HeaderError("header JSON is nested too deeply") from None
    except ValueError as exc:
        raise HeaderError(f"header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HeaderError(f"header JSON must be an object, got {type(doc).__name__}")
    data_size = size - 8 - n
    metadata = _metadata(doc.pop("__metadata__", None))
    tensors = {name: _tensor(name, value, data_size) for name, value in doc.items()}
    return SafetensorsHeader(tensors=tensors, metadata=metadata, header_size=n, file_size=size)


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HeaderError(f"__metadata__ must be an object of strings, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise HeaderError(f"__metadata__[{key!r}] must be a string, got {type(item).__name__}")
    return dict(value)


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor(name: str, value: object, data_size: int) -> TensorInfo:
    if not isinstance(value, dict):
        raise HeaderError(f"tensor {name!r}: entry must be an object, got {type(value).__name__}")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if not isinstance(dtype, str) or not dtype:
        raise HeaderError(f"tensor {name!r}: dtype must be a non-empty string")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise HeaderError(f"tensor {name!r}: shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
        raise HeaderError(f"tensor {name!r}: data_offsets must be two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise HeaderError(f"tensor {name!r}: data_offsets [{begin}, {end}] run backwards")
    if end > data_size:
        raise HeaderError(
            f"tensor {name!r}: data ends at byte {end} but the file holds only {data_size} data bytes (truncated?)"
        )
    return TensorInfo(dtype, tuple(shape), (begin, end))
