"""Every path a request names must resolve inside a configured root (symlinks included), and every
file the worker reads from such a path is a regular file, opened without blocking.

A FIFO named like an image would block `open()` until some writer came along; a symlink loop makes
`resolve()` raise; a link inside a model folder may point out of the models dir. Each of those is
a hostile input to answer, never a reason to hang or to read outside the roots.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import UnsafePath

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # not on Windows, which has no FIFOs in the file system
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class NotRegularFile(OSError):
    """The path is a FIFO, socket, device or folder: never read (an OSError, so "cannot read" handlers see it)."""


def _what(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def real(path: Path) -> Path | None:
    """`path` with every symlink resolved; None when it cannot be (a loop, a dangling link, no permission)."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13 says "Symlink loop" this way
        return None


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks resolved, lies inside `root`; False also when it cannot be resolved."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def resolve_in_roots(name: str, roots: list[Path], field: str) -> Path:
    """`name` relative to one of `roots` (or absolute but inside one); else unsafe_path."""
    if "\x00" in name:
        raise UnsafePath(f"{field}: path contains a NUL byte", [{"path": field, "message": "NUL byte"}])
    candidate = Path(name)
    candidates = [candidate] if candidate.is_absolute() else [root / candidate for root in roots]
    for path in candidates:
        for root in roots:
            if inside(path, root):
                return path.resolve()
    shown = ", ".join(str(r) for r in roots) or "(none configured)"
    raise UnsafePath(
        f"{field}: {name!r} is outside the allowed roots ({shown})",
        [{"path": field, "message": "outside the allowed roots"}],
    )


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """`path` opened for reading if it is a regular file; NotRegularFile otherwise, at once.

    O_NONBLOCK makes opening a FIFO return instead of waiting for a writer; fstat on the open
    descriptor (not a stat before the open) decides, so the file cannot be swapped in between.
    """
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{os.fspath(path)} is {_what(mode)}, not a regular file")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of the regular file `path`; ValueError when it holds more than `limit` bytes."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if limit is not None and size > limit:
            raise FileTooLarge(size, limit)
        data = fh.read() if limit is None else fh.read(limit + 1)
    if limit is not None and len(data) > limit:  # it grew while we read
        raise FileTooLarge(len(data), limit)
    return data


class FileTooLarge(ValueError):
    def __init__(self, size: int, limit: int):
        super().__init__(f"{size} bytes, over the limit of {limit}")
        self.size, self.limit = size, limit


@dataclass
class TreeReport:
    """What a walk of a model folder found: its size, newest mtime, and what must not be read."""

    size: int = 0
    mtime: float = 0.0
    outside: list[str] = field(default_factory=list)  # entries whose target is outside the root
    unreadable: list[str] = field(default_factory=list)  # FIFOs, devices, loops, dangling links
    pickle_dirs: list[str] = field(default_factory=list)  # folders holding pickle weights and no .safetensors


_PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")


def survey(folder: Path, root: Path, max_entries: int = 100_000) -> TreeReport:
    """Walk `folder` the way a loader reads it (links followed) and report every entry that leaves
    `root` or is not a regular file or folder; each real folder is walked once, so links cannot loop."""
    report = TreeReport()
    real_root = real(root) or root
    start = real(folder)
    if start is None:
        report.unreadable.append(f"{folder}: cannot be resolved")
        return report
    if not is_under(start, real_root):
        report.outside.append(f"{folder} -> {start}")
        return report
    seen: set[tuple[int, int]] = set()
    stack = [(folder, start)]
    entries = 0
    while stack:
        shown, here = stack.pop()
        try:
            st = os.stat(here)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            children = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as exc:
            report.unreadable.append(f"{shown}: {exc.strerror or exc}")
            continue
        weights: set[str] = set()
        for entry in children:
            entries += 1
            if entries > max_entries:
                report.unreadable.append(f"{folder}: more than {max_entries} entries")
                return report
            name = shown / entry.name
            target = real(Path(entry.path)) if entry.is_symlink() else Path(entry.path)
            if target is None:
                report.unreadable.append(f"{name}: a symlink that cannot be resolved (a loop, or its target is gone)")
                continue
            if entry.is_symlink() and not is_under(target, real_root):
                report.outside.append(f"{name} -> {target}")
                continue
            try:
                tst = os.stat(target)
            except OSError as exc:
                report.unreadable.append(f"{name}: {exc.strerror or exc}")
                continue
            if stat.S_ISDIR(tst.st_mode):
                stack.append((name, target))
            elif stat.S_ISREG(tst.st_mode):
                report.size += tst.st_size
                report.mtime = max(report.mtime, tst.st_mtime)
                weights.add(Path(entry.name).suffix.lower())
            else:
                report.unreadable.append(f"{name}: {_what(tst.st_mode)}")
        if weights & set(_PICKLE_WEIGHTS) and ".safetensors" not in weights:
            report.pickle_dirs.append(str(shown))
    return report


def is_under(path: Path, root: Path) -> bool:
    """`path` lies in `root`, both already resolved (no file system access)."""
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def safe_file_name(text: str, limit: int = 80) -> str:
    cleaned = _UNSAFE_NAME.sub("_", text).strip("._") or "item"
    return cleaned[:limit]
