"""Content identity of a component on disk, cheap enough to take on every load.

Two model folders whose text encoder (or VAE, ...) holds the same weights and config must map
to one cache entry: SDXL fine-tunes commonly ship the base's CLIP encoders and VAE unchanged, and
a refiner shares text_encoder_2 and the VAE with its base. A full SHA-256 of a 5 GB UNet takes
~10 s, so the identity is the config plus, per weight file, its size, its safetensors header
(every tensor's name, dtype, shape and offset) and 64 evenly spread 16 KiB windows of its data.
Two files that agree on all of that hold the same weights for any practical purpose; a rare
partial fine-tune that changes none of the windows would share wrongly, which is why the windows
are many and spread over the whole file.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

WINDOWS = 64
WINDOW = 16 * 1024
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha1()
    h.update(str(st.st_size).encode())
    with open(path, "rb") as fh:
        if path.suffix == ".safetensors" and st.st_size >= 8:
            head = fh.read(8)
            n = int.from_bytes(head, "little")
            if 0 < n <= min(st.st_size - 8, 100 * 2**20):
                h.update(fh.read(n))
        if st.st_size <= WINDOWS * WINDOW:
            fh.seek(0)
            h.update(fh.read())
        else:
            stride = (st.st_size - WINDOW) // (WINDOWS - 1)
            for i in range(WINDOWS):
                fh.seek(i * stride)
                h.update(fh.read(WINDOW))
    digest = h.hexdigest()
    with _lock:
        _cache[key] = digest
    return digest


def of_folder(folder: Path, salt: str = "") -> str:
    """Identity of a component folder (config + weights), salted with e.g. the dtype."""
    h = hashlib.sha1(salt.encode())
    for child in sorted(folder.iterdir()):
        if not child.is_file():
            continue
        h.update(child.name.encode())
        if child.suffix in _WEIGHT_SUFFIXES:
            h.update(_file_digest(child).encode())
        elif child.stat().st_size <= 8 * 2**20:  # configs, tokenizer vocabularies
            h.update(child.read_bytes())
    return h.hexdigest()


def of_file(path: Path, salt: str = "") -> str:
    """Identity of a single-file model (or a part of one, named in `salt`)."""
    return hashlib.sha1(salt.encode() + _file_digest(path).encode()).hexdigest()

