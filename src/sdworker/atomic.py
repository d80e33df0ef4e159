"""Atomic file writes: a reader never sees half a file, and a crash leaves no partial one.

The one way the worker writes a file others read (images, sidecars, hash caches, preset exports,
tiny checkpoints): the bytes go to a temp file in the same folder, are fsynced, get the mode
``open()`` would give (an existing file's bits when it is replaced, else 0o666 & ~umask; never
the temp file's 0600), and then take their name: ``os.replace`` over the old file, or, when the
name must be new, a hard link that fails atomically when something else took the name meanwhile.
No temp file is left behind either way. Standard library only: every layer may import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

MAX_SUFFIX = 10000  # unique names: .1 … .9999 before a name is given up on


class NameTaken(FileExistsError):
    """replace=False and the name is taken (by a file, or by something else meanwhile)."""


def write_atomic(path: str | os.PathLike[str], data: bytes, *, replace: bool = True, unique: bool = False) -> Path:
    """Write `data` to `path` atomically; returns the path written.

    replace=False: the name must not exist yet (else :class:`NameTaken`). unique=True: a taken
    name is no error, the next free ``<stem>.<n><ext>`` is used. The folder must exist.
    """
    target = Path(path)
    mode = _mode_for(target) if replace and not unique else 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if hasattr(os, "fchmod"):  # POSIX (Windows has no modes to set)
                os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        if unique:
            return _link_unique(tmp, target)
        if replace:
            os.replace(tmp, target)
        elif not _claim(tmp, target):
            raise NameTaken(17, "the name is taken", str(target))
        return target
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # renamed into place: gone already; linked: the name keeps the data


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """``data`` as indented JSON (one trailing newline); serialisation errors raise before any file is made."""
    text = json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False)
    write_atomic(path, (text + "\n").encode("utf-8"))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 `text` as given (no newline translation); the folder is made when missing."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(target, text.encode("utf-8"))


def _mode_for(target: Path) -> int:
    """What open() would leave: the replaced file's permission bits, or 0o666 & ~umask for a new one."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def _link_unique(tmp: str, path: Path) -> Path:
    """Give the temp file `path`, or `<stem>.<n><suffix>` for the first n whose name is free."""
    for n in range(MAX_SUFFIX):
        candidate = path if n == 0 else path.with_name(f"{path.stem}.{n}{path.suffix}")
        if os.path.isdir(candidate) and n == 0:
            raise IsADirectoryError(21, "a folder has that name", str(candidate))
        if _claim(tmp, candidate):
            return candidate
    raise FileExistsError(17, f"no free name left ({path.stem}.1 … .{MAX_SUFFIX - 1})", str(path))


def _claim(tmp: str, path: Path) -> bool:
    """Make the finished temp file `path` if that name is free; False when it is taken."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass  # no hard links here (some network and FAT file systems)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # reserve the name
    except FileExistsError:
        return False
    os.replace(tmp, path)
    return True


_UMASK: int | None = None
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read once: /proc/self/status where there is one (reading it with
    os.umask means setting it, which would race with other threads creating files)."""
    global _UMASK
    with _UMASK_LOCK:
        if _UMASK is None:
            _UMASK = _read_umask()
        return _UMASK


def _read_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
