"""An LRU cache of loaded module versions (f, h, g), bounded by the bytes of their parameters and buffers.

Keyed by the artifact (its sha256, format and adapter architecture), not by composition: a task module
that 100 compositions share is held once, and a composition whose f and g are loaded needs only its
adapter (issue 27).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from app.ops import metrics
from transplant.compose import parameter_bytes


@dataclass
class _Entry:
    module: nn.Module
    nbytes: int


class ModelCache:
    """Loaded modules by key; least recently used ones are dropped once `max_bytes` is exceeded.

    A module larger than the whole bound is served but not kept. Two threads asking for the same
    missing key load it once (a per-key lock); loads of different keys run in parallel.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, key: str, load: Callable[[], nn.Module]) -> nn.Module:
        """The module under `key`, loaded by `load()` on a miss."""
        with self._lock:
            entry = self._hit(key)
            if entry is not None:
                return entry.module
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._hit(key)
                if entry is not None:
                    return entry.module
                self.misses += 1
                metrics.CACHE_MISSES.inc()
            try:
                module = load()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            self._insert(key, module)
            return module

    def peek(self, key: str) -> nn.Module | None:
        """The module under `key` if it is loaded (counted as a hit), else None; never loads."""
        with self._lock:
            entry = self._hit(key)
            return entry.module if entry is not None else None

    def _hit(self, key: str) -> _Entry | None:
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
            self.hits += 1
            metrics.CACHE_HITS.inc()
        return entry

    def _insert(self, key: str, module: nn.Module) -> None:
        nbytes = parameter_bytes(module)
        with self._lock:
            if nbytes > self.max_bytes or key in self._items:
                return
            self._items[key] = _Entry(module, nbytes)
            self.bytes += nbytes
            metrics.CACHE_BYTES.inc(nbytes)
            metrics.MODULES_LOADED.inc()
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.nbytes
                self.evictions += 1
                metrics.CACHE_EVICTIONS.inc()
                metrics.CACHE_BYTES.dec(old.nbytes)
                metrics.MODULES_LOADED.dec()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def clear(self) -> None:
        with self._lock:
            metrics.MODULES_LOADED.dec(len(self._items))
            self._items.clear()
            metrics.CACHE_BYTES.dec(self.bytes)  # the gauge sums every cache of the process
            self.bytes = 0

    def stats(self) -> dict:
        with self._lock:
            return {
                "entries": len(self._items), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
            }
