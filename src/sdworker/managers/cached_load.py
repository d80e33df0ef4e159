"""Cache lookup, then load: the one path by which weights on disk become a cache entry.

Component, VAE, LoRA and ControlNet managers each name what they load by its content identity
(fingerprint.py). A hit only records the new owner; a miss reads from disk, counts the read and
puts the entry into the MemoryManager, which pins it while making room, so what was just loaded
is never evicted before its caller uses it. A read that fails any other way than the ones the
caller lets through becomes ModelLoadFailed: a broken file must not take the worker down.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from ..errors import ModelLoadFailed
from .memory import CacheEntry, MemoryManager

log = logging.getLogger(__name__)


class CachedLoader:
    """Mixin of the managers that read weights into the shared cache; counts its disk reads."""

    memory: MemoryManager
    disk_loads: int = 0

    def cached(
        self,
        key: str,
        owner: str,
        read: Callable[[], Any],
        entry: Callable[[Any], CacheEntry],
        *,
        label: Callable[[Any], str],
        failure: Callable[[Exception], str],
        passes: tuple[type[Exception], ...] = (ModelLoadFailed,),
    ) -> CacheEntry:
        """The entry under `key` (now also owned by `owner`), or what `read` gives, put in the cache.

        `entry` makes the cache entry of what was read, `label` names it for the log, `failure`
        words a read error; errors of the `passes` types are raised as they are.
        """
        hit = self.memory.get(key)
        if hit is not None:
            hit.model_ids.add(owner)
            return hit
        t0 = time.perf_counter()
        try:
            obj = read()
        except passes:
            raise
        except Exception as exc:  # noqa: BLE001  (a broken file must not take the worker down)
            raise ModelLoadFailed(failure(exc)) from exc
        self.disk_loads += 1
        log.info("read %s from disk in %.0f ms", label(obj), (time.perf_counter() - t0) * 1000)
        return self.memory.put(entry(obj))
