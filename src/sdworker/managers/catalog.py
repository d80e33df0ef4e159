"""Discovery: every model file and folder under the models dirs, with its kind and architecture.

The layout people keep (A1111, ComfyUI, InvokeAI) is honoured, kind folders first
(checkpoints/, vae/, lora/, embeddings/, controlnet/, upscalers/, ...), and content decides
the rest: each file's safetensors header (never its weights) or a folder's configs say what it
is (models.detect). Detection is cached per file version (size + mtime), so a rescan is a walk
and a stat per entry; the listing itself is rescanned when older than `ttl` seconds or on
request, so files added or removed show up without a restart.

Symlinks are followed only inside the models dir, and each real folder is walked once, so a
loop, a dangling link or a link back up is a warning, never an error or a second id. A model
folder is surveyed as a loader would read it (paths.survey): one whose files link out of the
models dir is listed but refused (`unsafe_path`), one holding a FIFO or a device is unreadable.

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
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadFailed, ModelNotFound, UnsafePath, ValidationFailed
from ..paths import NotRegularFile, inside, is_under, real, survey

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
        """A pickle file, or a folder whose weights are pickles only (.bin with no .safetensors)."""
        return self.format == "ckpt" or bool(self.details.get("pickle_weights"))

    @property
    def unsafe(self) -> list[str]:
        """Entries it reads that link outside the models dir (components, sidecars, tokenizers)."""
        return list(self.details.get("unsafe", []))

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


class ModelCatalog:
    def __init__(self, roots: list[Path], ttl: float = 2.0):
        self.roots = list(roots)
        self.ttl = ttl
        self._lock = threading.Lock()
        self._items: list[CatalogItem] = []
        self._scanned_at = 0.0
        self._detections: dict[tuple[str, int, int], Any] = {}  # (path, size, mtime_ns) -> Detection
        self._warned: set[str] = set()
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
            for item in self._walk(root):
                if str(item.path) not in seen:  # two roots or two links may reach one file: list it once
                    seen.add(str(item.path))
                    found.append(item)
        found.sort(key=lambda i: (i.kind, i.model_id))
        return found

    def _warn(self, message: str) -> None:
        """A bad entry is said once on stderr, not on every rescan."""
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    def _walk(self, root: Path) -> list[CatalogItem]:
        """Every model under `root`: real folders first, breadth first, then what symlinks lead to.

        Each real folder is walked once (by device and inode), so a link back up (`again -> .`) or
        a loop costs nothing and names nothing twice; an entry reached by its real path keeps that
        id, a link to it adds none. Bad entries (loops, dangling links, links out of the models
        dir, FIFOs and devices named like models) are skipped with a warning.
        """
        real_root = real(root)
        if real_root is None:
            return []
        out: list[CatalogItem] = []
        visited: set[tuple[int, int]] = set()
        folders: deque[tuple[Path, int]] = deque([(root, 0)])
        links: deque[tuple[Path, int]] = deque()
        while folders or links:
            if folders:
                folder, depth = folders.popleft()
                target: Path | None = folder
            else:
                folder, depth = links.popleft()
                target = real(folder)
                if target is None:
                    self._warn(f"skipping {folder}: a symlink that cannot be resolved (a loop, or its target is gone)")
                    continue
                if not is_under(target, real_root):
                    self._warn(f"skipping {folder}: it links outside the models dir {root} (to {target})")
                    continue
                if not target.is_dir():
                    self._file(root, folder, out)
                    continue
            try:
                st = os.stat(target)
                if (st.st_dev, st.st_ino) in visited:
                    continue  # walked already, under its real path or another link
                visited.add((st.st_dev, st.st_ino))
                if folder != root and ((folder / "model_index.json").is_file() or (folder / "config.json").is_file()):
                    item = self._item(root, folder, real_root)
                    if item is not None:
                        out.append(item)
                        continue
                if depth > MAX_DEPTH:
                    continue
                children = sorted(folder.iterdir())
            except OSError as exc:
                self._warn(f"skipping {folder}: {exc.strerror or exc}")
                continue
            for child in children:
                if child.name.startswith("."):
                    continue  # hidden, and the builders' .tmp- staging folders
                if child.is_symlink():
                    links.append((child, depth + 1))
                elif child.is_dir():
                    folders.append((child, depth + 1))
                else:
                    self._file(root, child, out)
        return out

    def _file(self, root: Path, path: Path, out: list[CatalogItem]) -> None:
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            return
        if not path.is_file():  # a FIFO would block the first read; a device is no model
            self._warn(f"skipping {path}: not a regular file")
            return
        item = self._item(root, path, real(root) or root)
        if item is not None:
            out.append(item)

    def _item(self, root: Path, path: Path, real_root: Path) -> CatalogItem | None:
        from ..models.detect import detect_file

        unsafe: list[str] = []
        try:
            if path.is_dir():
                tree = survey(path, real_root)
                size, mtime = tree.size, tree.mtime
                marker = path / ("model_index.json" if (path / "model_index.json").is_file() else "config.json")
                st = marker.stat()
                version = (str(path), size, st.st_mtime_ns)
                unsafe = tree.outside
                if tree.unreadable:
                    raise NotRegularFile("; ".join(tree.unreadable[:3]))
            else:
                st = path.stat()
                size, mtime = st.st_size, st.st_mtime
                version = (str(path), st.st_size, st.st_mtime_ns)
            det = self._detections.get(version)
            if det is None:
                det = detect_file(path)
                self._detections[version] = det
            if not path.is_dir():
                unsafe = _outside_siblings(path, real_root, det.kind == "checkpoint")
        except Exception as exc:  # noqa: BLE001  (a broken file is listed as unknown, never fatal)
            log.info("cannot inspect %s: %s", path, exc)
            details = {"error": str(exc), **({"unsafe": unsafe} if unsafe else {})}
            return CatalogItem(self._id(root, path), "unknown", "unknown", "unknown", path.resolve(), 0, 0.0, root, details)
        kind = det.kind
        if kind == "unknown":
            kind = _kind_from_folders(path.relative_to(root)) or "unknown"
        fmt = "diffusers" if path.is_dir() else det.format
        details = dict(det.details)
        if unsafe:
            self._warn(f"{path}: {', '.join(unsafe)} link(s) outside the models dir {root}; requests for it are refused")
            details["unsafe"] = unsafe
        if path.is_dir() and tree.pickle_dirs:
            details["pickle_weights"] = [Path(d).relative_to(path).as_posix() for d in tree.pickle_dirs]
        return CatalogItem(self._id(root, path), kind, det.base_model, fmt, path.resolve(), size, mtime, root, details)

    @staticmethod
    def _id(root: Path, path: Path) -> str:
        rel = path.relative_to(root).as_posix()
        if path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES:
            rel = rel[: -len(path.suffix)]
        return rel

    # ---- lookup ------------------------------------------------------------------------------

    def find(self, model_id: str, kind: str | tuple[str, ...] | None = None, field_path: str = "model_id") -> CatalogItem:
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
            return _usable(exact[0], field_path, readable=False)  # a broken file is still found: info, validate
        if len(exact) > 1:
            ids = ", ".join(i.model_id for i in exact)
            raise ValidationFailed(f"{field_path}: {model_id!r} is ambiguous: {ids}", [{"path": field_path, "message": f"ambiguous: {ids}"}])
        self.invalidate()  # maybe it was just added: one rescan before saying no
        everything = self.items()
        items = [i for i in everything if kinds is None or i.kind in kinds]
        again = [i for i in items if i.model_id in (model_id, stem)]
        if again:
            return _usable(again[0], field_path)
        what = f"{' or '.join(kinds)} " if kinds else ""
        for other in (i for i in everything if i.model_id in (model_id, stem) or str(i.path) == model_id):
            if other.unsafe or other.details.get("error"):
                return _usable(other, field_path)  # found, but refused or unreadable: say so, not "not found"
            if other.pickle and other.kind == "unknown":
                return other  # names alone could not tell a pickle's kind: the caller refuses it or tries it as asked
            raise ModelNotFound(
                f"{field_path}: {other.model_id!r} is a {other.base_model} {other.kind}, not a {what.strip() or 'model'}",
                [{"path": field_path, "message": f"a {other.kind}"}],
            )
        known = [i.model_id for i in items]
        close = difflib.get_close_matches(model_id, known, n=3, cutoff=0.4)
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


def _usable(item: CatalogItem, field_path: str, readable: bool = True) -> CatalogItem:
    """The item, unless it reads through a link out of the models dir (unsafe_path) or could not be
    read at all (model_load_failed, with why: a truncated file is found, just not usable)."""
    if item.unsafe:
        shown = "; ".join(item.unsafe[:3])
        raise UnsafePath(
            f"{field_path}: {item.model_id!r} reads files outside the models dir through symlinks ({shown})",
            [{"path": field_path, "message": "links outside the models dir"}],
        )
    if readable and item.kind == "unknown" and item.details.get("error"):
        raise ModelLoadFailed(
            f"{field_path}: {item.model_id!r} was found at {item.path} but cannot be read: {item.details['error']}",
            [{"path": field_path, "message": "found, but unreadable"}],
        )
    return item


def _outside_siblings(path: Path, real_root: Path, checkpoint: bool) -> list[str]:
    """What reading a single file also reads that links out of the models dir: its sidecar (X.json),
    and for a checkpoint the tokenizer folders beside it (managers.single_file looks there)."""
    out = []
    sidecar = path.with_suffix(".json")
    if sidecar.is_symlink():
        target = real(sidecar)
        if target is not None and not is_under(target, real_root):
            out.append(f"{sidecar} -> {target}")
    for name in ("tokenizer", "tokenizer_2") if checkpoint else ():
        folder = path.parent / name
        if folder.is_dir():
            out.extend(survey(folder, real_root).outside)
            target = real(folder)
            if folder.is_symlink() and target is not None and not is_under(target, real_root):
                out.append(f"{folder} -> {target}")
    return out


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
