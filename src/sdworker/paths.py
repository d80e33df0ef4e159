"""Every path a request names must resolve inside a configured root (symlinks included)."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import UnsafePath

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
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


def safe_file_name(text: str, limit: int = 80) -> str:
    cleaned = _UNSAFE_NAME.sub("_", text).strip("._") or "item"
    return cleaned[:limit]
