"""Discovery: every model file and folder under the models dirs, with its kind and architecture.

The layout people keep (A1111, ComfyUI, InvokeAI) is honoured, kind folders first
(checkpoints/, vae/, lora/, embeddings/, controlnet/, upscalers/, ...), and content decides
the rest: each file's safetensors header (never its weights) or a folder's configs say what it
is (models.detect). Detection is cached per file version (size + mtime), so a rescan is a walk
and a stat per entry; the listing itself is rescanned when older than `ttl` seconds or on
request, so files added or removed show up without a restart.

An id is the path relative to its models dir, POSIX style, without the file suffix:
`tiny-sdxl` (a folder), `checkpoints/juggernaut` (checkpoints/juggernaut.safetensors). A bare
file name also finds a file when it is unique.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..paths import inside
from ..errors import ModelNotFound, UnsafePath, ValidationFailed

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_DEPTH = 5


@dataclass(frozen=True)
class CatalogItem:
    model_id: str
    kind: str
    base_model: str
    format: str  # diffusers | safetensors | gguf | ckpt
    path: Path
    size_bytes: int
    mtime: float
    root: Path
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def pickle(self) -> bool:
        return self.format == "ckpt"

    @property
    def is_pipeline(self) -> bool:
        """A diffusers pipeline folder or a whole single-file checkpoint (generation can run it)."""
        return self.kind == "checkpoint"

    def public(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "kind": self.kind,
            "base_model": self.base_model,
            "format": self.format,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "size_mb": round(self.size_bytes / 2**20, 2),
            "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.mtime)),
            "pickle": self.pickle,
            "details": self.details,
        }


def _folder_size(path: Path) -> tuple[int, float]:
    size, mtime = 0, 0.0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            size += st.st_size
            mtime = max(mtime, st.st_mtime)
    return size, mtime


class ModelCatalog:
    def __init__(self, roots: list[Path], ttl: float = 2.0):
        self.roots = list(roots)
        self.ttl = ttl
        self._lock = threading.Lock()
        self._items: list[CatalogItem] = []
        self._scanned_at = 0.0
        self._detections: dict[tuple[str, int, int], Any] = {}  # (path, size, mtime_ns) -> Detection
        self.scans = 0

    # ---- scanning --------------------------------------------------------------------------------

    def items(self, refresh: bool = False) -> list[CatalogItem]:
        with self._lock:
            if refresh or not self._scanned_at or time.monotonic() - self._scanned_at > self.ttl:
                self._items = self._scan()
                self._scanned_at = time.monotonic()
                self.scans += 1
            return list(self._items)

    def invalidate(self) -> None:
        with self._lock:
            self._scanned_at = 0.0

    def _scan(self) -> list[CatalogItem]:
        found: list[CatalogItem] = []
        seen: set[str] = set()
        for root in self.roots:
            if not root.is_dir():
                continue
            real_root = root.resolve()
            for item in self._walk(root, real_root, root, 0):
                if str(item.path) not in seen:  # two roots may overlap; list a file once
                    seen.add(str(item.path))
                    found.append(item)
        found.sort(key=lambda i: (i.kind, i.model_id))
        return found

    def _walk(self, root: Path, real_root: Path, folder: Path, depth: int) -> list[CatalogItem]:
        out: list[CatalogItem] = []
        try:
            children = sorted(folder.iterdir())
        except OSError:
            return out
        for child in children:
            if child.name.startswith("."):
                continue  # hidden, and the builders' .tmp- staging folders
            if child.is_symlink() and not inside(child, real_root):
                log.warning("skipping %s: it links outside the models dir %s", child, root)
                continue
            if child.is_dir():
                if (child / "model_index.json").is_file() or (child / "config.json").is_file():
                    item = self._item(root, child)
                    if item is not None:
                        out.append(item)
                        continue
                if depth < MAX_DEPTH:
                    out.extend(self._walk(root, real_root, child, depth + 1))
            elif child.suffix.lower() in WEIGHT_SUFFIXES:
                item = self._item(root, child)
                if item is not None:
                    out.append(item)
        return out

    def _item(self, root: Path, path: Path) -> CatalogItem | None:
        from ..models.detect import detect_file

        try:
            if path.is_dir():
                size, mtime = _folder_size(path)
                marker = path / ("model_index.json" if (path / "model_index.json").is_file() else "config.json")
                st = marker.stat()
                version = (str(path), size, st.st_mtime_ns)
            else:
                st = path.stat()
                size, mtime = st.st_size, st.st_mtime
                version = (str(path), st.st_size, st.st_mtime_ns)
            det = self._detections.get(version)
            if det is None:
                det = detect_file(path)
                self._detections[version] = det
        except Exception as exc:  # noqa: BLE001  (a broken file is listed as unknown, never fatal)
            log.info("cannot inspect %s: %s", path, exc)
            return CatalogItem(self._id(root, path), "unknown", "unknown", "unknown", path.resolve(), 0, 0.0, root, {"error": str(exc)})
        kind = det.kind
        if kind == "unknown":
            kind = _kind_from_folders(path.relative_to(root)) or "unknown"
        fmt = "diffusers" if path.is_dir() else det.format
        return CatalogItem(self._id(root, path), kind, det.base_model, fmt, path.resolve(), size, mtime, root, dict(det.details))

    @staticmethod
    def _id(root: Path, path: Path) -> str:
        rel = path.relative_to(root).as_posix()
        if path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES:
            rel = rel[: -len(path.suffix)]
        return rel

    # ---- lookup ------------------------------------------------------------------------------

    def find(self, model_id: str, kind: str | tuple[str, ...] | None = None, field_path: str = "data.model_id") -> CatalogItem:
        """The item named `model_id` (id, id + suffix, or a unique file name) of `kind` (one or several);
        errors name close ids."""
        kinds = (kind,) if isinstance(kind, str) else kind
        if "\x00" in model_id or model_id.startswith(("/", "\\")) and not self._inside_roots(model_id):
            raise UnsafePath(f"{field_path}: {model_id!r} is outside the models dirs", [{"path": field_path, "message": "outside the allowed roots"}])
        if ".." in Path(model_id).parts:
            self._check_inside(model_id, field_path)
        items = [i for i in self.items() if kinds is None or i.kind in kinds]
        stem = model_id
        for suffix in WEIGHT_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        exact = [i for i in items if i.model_id in (model_id, stem) or str(i.path) == model_id]
        if not exact:
            exact = [i for i in items if i.model_id.rsplit("/", 1)[-1] == stem]
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:
            ids = ", ".join(i.model_id for i in exact)
            raise ValidationFailed(f"{field_path}: {model_id!r} is ambiguous: {ids}", [{"path": field_path, "message": f"ambiguous: {ids}"}])
        self.invalidate()  # maybe it was just added: one rescan before saying no
        items = [i for i in self.items() if kinds is None or i.kind in kinds]
        again = [i for i in items if i.model_id in (model_id, stem)]
        if again:
            return again[0]
        known = [i.model_id for i in items]
        close = difflib.get_close_matches(model_id, known, n=3, cutoff=0.4)
        what = f"{' or '.join(kinds)} " if kinds else ""
        hint = f"; did you mean {', '.join(close)}?" if close else (f"; available: {', '.join(known[:10])}" if known else "")
        raise ModelNotFound(f"{what}model {model_id!r} was not found in the models dirs{hint}", [{"path": field_path, "message": "not found"}])

    def _inside_roots(self, name: str) -> bool:
        return any(inside(Path(name), r) for r in self.roots)

    def _check_inside(self, name: str, field_path: str) -> None:
        if not any(inside(r / name, r) for r in self.roots):
            raise UnsafePath(f"{field_path}: {name!r} is outside the models dirs", [{"path": field_path, "message": "outside the allowed roots"}])

    def search(self, query: str | None, kind: str | None, base_model: str | None, fmt: str | None, min_mb: float | None, max_mb: float | None, limit: int) -> list[CatalogItem]:
        words = [w for w in (query or "").lower().split() if w]
        out = []
        for i in self.items():
            if kind and i.kind != kind or base_model and i.base_model != base_model or fmt and i.format != fmt:
                continue
            mb = i.size_bytes / 2**20
            if min_mb is not None and mb < min_mb or max_mb is not None and mb > max_mb:
                continue
            hay = f"{i.model_id} {i.path.name} {i.details.get('title', '')}".lower()
            if all(w in hay for w in words):
                out.append(i)
        return out[:limit]


_FOLDER_KINDS: dict[str, str] = {
    "checkpoints": "checkpoint",
    "stable-diffusion": "checkpoint",
    "models": "checkpoint",
    "vae": "vae",
    "lora": "lora",
    "loras": "lora",
    "lycoris": "lora",
    "embeddings": "embedding",
    "textual_inversion": "embedding",
    "controlnet": "controlnet",
    "upscalers": "upscaler",
    "upscale_models": "upscaler",
    "esrgan": "upscaler",
    "realesrgan": "upscaler",
}


def _kind_from_folders(rel: Path) -> str | None:
    for part in rel.parts[:-1]:
        kind = _FOLDER_KINDS.get(part.lower())
        if kind:
            return kind
    return None
