"""Pickle weights (.ckpt/.pt/.pth/.bin), read only with --allow-pickle and only weights-only.

Unpickling can run code, so the worker opens a pickle only when started with --allow-pickle: the
locator, the catalog lookups and request planning refuse one without the flag (unsafe_path,
naming it). With the flag, the tensors are read by torch's weights-only unpickler, which builds
tensors and plain containers and refuses anything else, as diffusers' own loaders do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelLoadFailed, ModelNotFound

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def is_pickle(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def pickle_state(path: str | Path) -> dict[str, Any]:
    """The tensors of a pickle checkpoint, read with torch's weights-only unpickler (no code runs).

    Only for files the caller was allowed to open (--allow-pickle: locator, catalog and planning
    refuse pickles without it). Memory-mapped where the file allows it (torch.save's zip format),
    so reading the shapes does not read the weights; A1111's ``state_dict`` nesting is unwrapped.
    """
    import torch

    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(str(path), map_location="cpu", weights_only=True)  # the legacy (pre-zip) format
    except FileNotFoundError as exc:
        raise ModelNotFound(f"checkpoint {str(path)!r} does not exist") from exc
    except Exception as exc:  # noqa: BLE001  (UnpicklingError for code or garbage, EOFError for a cut file, ...)
        raise ModelLoadFailed(
            f"{str(path)!r} is not a readable weights-only pickle ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "torch's weights_only loader refuses pickles that would run code"
        ) from exc
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadFailed(f"{str(path)!r} holds a pickled {type(state).__name__}, not a dict of tensors")
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
