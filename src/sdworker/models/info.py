"""One call that tells the model instructor everything cheap about a model path.

Safetensors files are read header-only; pickles (.ckpt/.pt/.pth/.bin) are never opened for
parsing, since unpickling can run arbitrary code; diffusers folders are read from their JSON
configs. Hashes are computed only when asked, through a :class:`~.hashes.HashCache` if given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import hashes as _hashes, sidecar as _sidecar
from .detect import PICKLE_SUFFIXES, Detection, detect, detect_diffusers_folder, detect_gguf, guess_from_path
from .gguf_header import read_gguf_header
from .safetensors_header import HeaderError, read_header

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
#: Metadata values longer than this stay strings (a thumbnail data URI is not worth parsing).
MAX_PARSED_VALUE = 8_000_000


class UnsupportedModelFile(ValueError):
    """Neither a safetensors file, a known pickle suffix, nor a diffusers folder."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite JSON constant {name}")


def parse_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """``__metadata__`` with JSON-looking values (``ss_tag_frequency``, ``ss_dataset_dirs``...) decoded.

    Only values that look like a JSON object or array are decoded; anything that fails to parse,
    is too big, or contains NaN/Infinity stays the original string. Nothing is evaluated.
    """
    parsed: dict[str, Any] = {}
    for key, value in metadata.items():
        text = value.strip()
        parsed[key] = value
        if len(text) > MAX_PARSED_VALUE or (text[:1], text[-1:]) not in (("{", "}"), ("[", "]")):
            continue
        try:
            parsed[key] = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            pass
    return parsed


def _folder_size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _file_hashes(path: Path, det: Detection, cache: _hashes.HashCache | None, safetensors: bool) -> dict[str, str]:
    get = cache.get if cache is not None else (lambda p, algo: _hashes.compute(algo, p))
    sha = get(path, "sha256")
    out = {"sha256": sha, "shorthash": _hashes.shorthash(sha), "model_hash": get(path, "model_hash")}
    if det.kind == "lora":
        lora_hash = get(path, "addnet") if safetensors else sha
        if safetensors:
            out["addnet"] = lora_hash
        out["lora_shorthash"] = _hashes.lora_shorthash(lora_hash)
    return out


def inspect_path(
    path: str | os.PathLike[str],
    hash_cache: _hashes.HashCache | None = None,
    with_hashes: bool = False,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Kind, base model, format, size, header metadata, sidecar and (optionally) hashes of a model.

    Raises FileNotFoundError for a missing path, HeaderError for a corrupt safetensors file and
    UnsupportedModelFile for anything else that is not a model; other results are plain JSON.
    With `root` (the models dir), a sidecar linking out of it is refused (UnsafePath), not read.
    Folders get no hashes (``hashes: None``): A1111/Civitai hashes are defined for single files.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such model file or folder: {p}")
    metadata: dict[str, str] = {}
    tensor_count: int | None = None
    safetensors = False
    if p.is_dir():
        det = detect_diffusers_folder(p)
        size = _folder_size(p)
    else:
        size = p.stat().st_size
        if p.suffix.lower() in PICKLE_SUFFIXES:
            det = guess_from_path(p)
        elif p.suffix.lower() == ".gguf":
            gguf = read_gguf_header(p)  # GGUFHeaderError is a HeaderError
            metadata, tensor_count = gguf.metadata, len(gguf.shapes)
            det = detect_gguf(gguf, p.name)
        else:
            try:
                header = read_header(p)
            except HeaderError as exc:
                if p.suffix.lower() in SAFETENSORS_SUFFIXES:
                    raise
                raise UnsupportedModelFile(f"{p.name}: not a safetensors file, pickle or diffusers folder ({exc})") from None
            safetensors = True
            metadata = header.metadata
            tensor_count = len(header.tensors)
            det = detect(header.shapes(), metadata, p.name)
    result: dict[str, Any] = {
        "path": str(p.absolute()),
        "name": p.name,
        "format": det.format,
        "kind": det.kind,
        "base_model": det.base_model,
        "details": det.details,
        "size": size,
        "pickle": det.format == "ckpt",
        "tensor_count": tensor_count,
        "metadata": parse_metadata(metadata),
        "sidecar_path": str(_sidecar.sidecar_path(p).absolute()),
    }
    try:
        result["sidecar"] = _sidecar.read(p, root)
    except _sidecar.SidecarError as exc:
        result["sidecar"] = {}
        result["sidecar_error"] = str(exc)
    if with_hashes:
        result["hashes"] = None if p.is_dir() else _file_hashes(p, det, hash_cache, safetensors)
    return result
