"""Model file hashes as A1111 / kohya / Civitai know them, with a persistent cache.

* ``sha256``: the full file SHA-256 (A1111 ``calculate_sha256``, 1 MiB chunks).
* shorthash: its first 10 hex chars; A1111 shows it as the checkpoint "Model hash" in infotext
  (Civitai calls it AutoV2).
* ``model_hash``: A1111's old hash (``model_hash()``): SHA-256 of the 0x10000 bytes at offset
  0x100000, first 8 hex chars (Civitai AutoV1). Files shorter than 1 MiB hash the empty string,
  as A1111 does.
* ``addnet``: kohya / sd-webui-additional-networks hash of a .safetensors file's tensor data,
  i.e. SHA-256 of everything after the ``8 + header length`` bytes, so editing metadata does
  not change it. A1111 uses it for LoRAs (``sha256_from_cache(..., "lora/<name>",
  use_addnet_hash=True)`` for .safetensors) and its LoRA shorthash is the first 12 hex chars.

Hashing a multi-GB checkpoint takes seconds to minutes, hence :class:`HashCache`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..paths import open_regular
from ..atomic import write_json_atomic

CHUNK_SIZE = 1 << 20
OLD_HASH_OFFSET = 0x100000
OLD_HASH_LENGTH = 0x10000
ALGORITHMS = ("sha256", "addnet", "model_hash")


def _stream(fh: Any, digest: "hashlib._Hash") -> str:
    for chunk in iter(lambda: fh.read(CHUNK_SIZE), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Full SHA-256 of a file, streamed."""
    with open_regular(path) as fh:
        return _stream(fh, hashlib.sha256())


def addnet_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a safetensors file's data section (skips the 8-byte length and the header).

    Like kohya's ``addnet_hash_safetensors`` the length is not validated: a garbage length just
    seeks past the end and hashes nothing.
    """
    with open_regular(path) as fh:
        n = int.from_bytes(fh.read(8), "little")
        fh.seek(8 + n)
        return _stream(fh, hashlib.sha256())


def a1111_model_hash(path: str | os.PathLike[str]) -> str:
    """A1111's old 8-char "model hash" (collision-prone; kept for old infotexts)."""
    with open_regular(path) as fh:
        fh.seek(OLD_HASH_OFFSET)
        return hashlib.sha256(fh.read(OLD_HASH_LENGTH)).hexdigest()[:8]


def shorthash(sha256_hex: str) -> str:
    """A1111's checkpoint shorthash (AutoV2): first 10 hex chars of the full SHA-256."""
    return sha256_hex[:10]


def lora_shorthash(hash_hex: str) -> str:
    """A1111's LoRA shorthash: first 12 hex chars (of the addnet hash for .safetensors)."""
    return hash_hex[:12]


def compute(algo: str, path: str | os.PathLike[str]) -> str:
    """One hash by name; looked up at call time so tests can count calls."""
    if algo == "sha256":
        return sha256_file(path)
    if algo == "addnet":
        return addnet_hash(path)
    if algo == "model_hash":
        return a1111_model_hash(path)
    raise ValueError(f"unknown hash algorithm {algo!r}; expected one of {ALGORITHMS}")


class HashCache:
    """Hashes computed once per file version, keyed by (absolute path, size, mtime_ns).

    A changed size or mtime drops every hash cached for that path. With ``cache_file`` the
    cache is loaded from and saved to that JSON file (atomic replace after each new hash); an
    unreadable cache file is ignored, not fatal. Safe to share between threads: one lock guards
    the table, and a per-path lock keeps two threads from hashing the same file at once.
    """

    VERSION = 1

    def __init__(self, cache_file: str | os.PathLike[str] | None = None):
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self._lock = threading.Lock()
        self._path_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, dict[str, Any]] = self._load()

    def get(self, path: str | os.PathLike[str], algo: str = "sha256") -> str:
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown hash algorithm {algo!r}; expected one of {ALGORITHMS}")
        key = os.path.abspath(path)
        st = os.stat(key)
        version = (st.st_size, st.st_mtime_ns)
        cached = self._lookup(key, version, algo)
        if cached is not None:
            return cached
        with self._lock:
            path_lock = self._path_locks.setdefault(key, threading.Lock())
        with path_lock:
            cached = self._lookup(key, version, algo)  # another thread may have just done it
            if cached is not None:
                return cached
            value = compute(algo, key)
            st_after = os.stat(key)
            if (st_after.st_size, st_after.st_mtime_ns) == version:  # unchanged while we read it
                self._store(key, version, algo, value)
            return value

    def sha256(self, path: str | os.PathLike[str]) -> str:
        return self.get(path, "sha256")

    def addnet(self, path: str | os.PathLike[str]) -> str:
        return self.get(path, "addnet")

    def model_hash(self, path: str | os.PathLike[str]) -> str:
        return self.get(path, "model_hash")

    def invalidate(self, path: str | os.PathLike[str]) -> None:
        with self._lock:
            if self._entries.pop(os.path.abspath(path), None) is not None:
                self._save_locked()

    def _lookup(self, key: str, version: tuple[int, int], algo: str) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or (entry["size"], entry["mtime_ns"]) != version:
                return None
            return entry["hashes"].get(algo)

    def _store(self, key: str, version: tuple[int, int], algo: str, value: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or (entry["size"], entry["mtime_ns"]) != version:
                entry = {"size": version[0], "mtime_ns": version[1], "hashes": {}}
                self._entries[key] = entry
            entry["hashes"][algo] = value
            self._save_locked()

    def _save_locked(self) -> None:
        if self.cache_file is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.cache_file, {"version": self.VERSION, "entries": self._entries})

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.cache_file is None:
            return {}
        try:
            doc = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("version") != self.VERSION or not isinstance(doc.get("entries"), dict):
            return {}
        return {k: e for k, e in doc["entries"].items() if _valid_entry(e)}


def _valid_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and all(isinstance(entry.get(f), int) and not isinstance(entry.get(f), bool) for f in ("size", "mtime_ns"))
        and isinstance(entry.get("hashes"), dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in entry["hashes"].items())
    )
