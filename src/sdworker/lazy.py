"""Services built on first use, once, whichever thread asks first."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class built_once(Generic[T]):
    """A cached property built under a lock: the warm-up thread and the first request may ask for
    an interface at the same moment, and it must be built once (functools.cached_property has no
    lock since Python 3.12)."""

    def __init__(self, build: Callable[[Any], T]):
        self.build = build
        self.name = build.__name__
        self.lock = threading.RLock()

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        with self.lock:
            if self.name not in obj.__dict__:  # once set there, the instance dict answers without us
                obj.__dict__[self.name] = self.build(obj)
            return obj.__dict__[self.name]
