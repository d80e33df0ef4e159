"""User metadata kept next to a model, never inside it.

A single file ``X.safetensors`` gets ``X.json`` beside it, the file A1111's extra-networks
"user metadata" editor reads and writes (description, activation text, preferred weight, ...),
so notes written here show up there and vice versa. A diffusers folder gets
``<folder>/sdworker.json``. Writes are atomic and refuse any target that is (or links to) the
model file itself, so a model's bytes are never touched.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping

from ..errors import UnsafePath
from ..paths import inside, open_regular
from ..atomic import write_json_atomic

FOLDER_SIDECAR_NAME = "sdworker.json"
_MAX_BYTES = 16 * 2**20
_lock = threading.Lock()


class SidecarError(ValueError):
    """The sidecar cannot be read or written (corrupt JSON, or it would overwrite the model)."""


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the sidecar of ``model_path`` lives (the model need not exist)."""
    p = Path(model_path)
    if p.is_dir():
        return p / FOLDER_SIDECAR_NAME
    return p.with_suffix(".json")


def check_inside(model_path: str | os.PathLike[str], root: str | os.PathLike[str] | None) -> None:
    """UnsafePath when the sidecar is a link leading out of `root` (the model's models dir)."""
    path = sidecar_path(model_path)
    if root is not None and (path.is_symlink() or path.exists()) and not inside(path, Path(root)):
        raise UnsafePath(
            f"the sidecar {path} links outside the models dir {root}; it is neither read nor written",
            [{"path": "model_id", "message": "sidecar links outside the models dir"}],
        )


def read(model_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The sidecar's JSON object; ``{}`` when there is none. Raises SidecarError if it is corrupt
    or not a regular file, UnsafePath if it links out of `root`."""
    path = sidecar_path(model_path)
    if _same_file(path, Path(model_path)):
        return {}  # a model named *.json has no sidecar of this form
    check_inside(model_path, root)
    try:
        with open_regular(path) as fh:  # a FIFO named X.json is refused, never waited on
            raw = fh.read(_MAX_BYTES + 1)
        if len(raw) > _MAX_BYTES:
            raise SidecarError(f"sidecar {path} is over {_MAX_BYTES >> 20} MiB")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SidecarError(f"cannot read sidecar {path}: {exc}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SidecarError(f"sidecar {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SidecarError(f"sidecar {path} must hold a JSON object, not {type(data).__name__}")
    return data


def update(
    model_path: str | os.PathLike[str], changes: Mapping[str, Any], replace: bool = False, root: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Merge ``changes`` into the sidecar (or replace it whole) and return the new contents.

    A key whose new value is ``None`` is removed. A corrupt existing sidecar is not merged
    into (SidecarError) unless ``replace`` is set, so user notes are never silently dropped.
    """
    model = Path(model_path)
    if not model.exists():
        raise FileNotFoundError(f"model {model} does not exist; not creating a sidecar for it")
    path = sidecar_path(model)
    if _same_file(path, model):
        raise SidecarError(f"refusing to write sidecar {path}: it is the model file itself")
    check_inside(model, root)
    if path.exists() and not path.is_file():
        raise SidecarError(f"refusing to write sidecar {path}: it is not a regular file")
    with _lock:
        current = {} if replace else read(model, root)
        merged = {**current, **changes}
        merged = {k: v for k, v in merged.items() if v is not None}
        try:
            write_json_atomic(path, merged)
        except (TypeError, ValueError) as exc:
            raise SidecarError(f"sidecar values must be JSON-serialisable: {exc}") from None
    return merged


def _same_file(a: Path, b: Path) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
