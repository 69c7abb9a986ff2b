"""Loaded module versions kept by a worker process between jobs, so repeated inputs skip S3 and loading.

A version's bytes never change (artifacts are content-addressed by sha256), so a module loaded for
one job is the same module the next job would download and deserialise again — on a small job that
is most of the host CPU (`torch.export.load` ~35 %, the S3 round trips ~20 %, bench/results/scale.md).

A job takes a module out of the cache for itself (`borrow`) and puts it back when it ends well, so
two jobs running at once in one process (`--concurrency 2`) never share an instance: the engine's
`frozen()` flips flags on the modules it is given and restores them on exit. A module is put back
only unchanged: its buffers are restored from a copy taken at load (a program exported in train
mode updates BatchNorm statistics in its forward) and an in-place change to a parameter (seen by
torch's version counter) drops the instance instead.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from transplant.compose import parameter_bytes


@dataclass
class _Entry:
    module: nn.Module
    nbytes: int
    buffers: dict[str, torch.Tensor]
    """A copy of the buffers as loaded; the module gets them back when it is returned."""
    versions: dict[str, int]
    """Each parameter's in-place version counter as loaded: any other value means it was written."""


def _state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    versions = {name: p._version for name, p in module.named_parameters()}
    return buffers, versions


def _restore(entry: _Entry) -> bool:
    """Put the module back as it was loaded; False when it cannot be (a parameter was written)."""
    module = entry.module
    params = dict(module.named_parameters())
    if params.keys() != entry.versions.keys():
        return False
    if any(p._version != entry.versions[name] or p.grad is not None for name, p in params.items()):
        return False
    buffers = dict(module.named_buffers())
    if buffers.keys() != entry.buffers.keys():
        return False
    with torch.no_grad():
        for name, saved in entry.buffers.items():
            current = buffers[name]
            if current.device != saved.device or current.shape != saved.shape:
                return False
            if not torch.equal(current, saved):
                current.copy_(saved)
    # copy_ bumped the buffers' version counters, which nobody checks; the parameters' are untouched.
    return True


def cache_key(storage_key: str, format: str, arch: dict | None) -> str:
    """What identifies a loaded module: its bytes (content address), how they load, and the spec."""
    return f"{storage_key}|{format}|{json.dumps(arch, sort_keys=True) if arch else ''}"


class ModuleCache:
    """Idle loaded modules by `cache_key`, least recently used dropped beyond `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._idle: OrderedDict[str, list[_Entry]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.dropped = 0

    @contextlib.contextmanager
    def borrow(self, key: str, load: Callable[[], nn.Module]) -> Iterator[nn.Module]:
        """A module of `key` for the caller alone (loaded on a miss); kept when the block ends well."""
        entry = self._take(key)
        if entry is None:
            module = load()
            buffers, versions = _state(module)
            copies = sum(b.numel() * b.element_size() for b in buffers.values())
            entry = _Entry(module, parameter_bytes(module) + copies, buffers, versions)
        yield entry.module
        # Reached only when the block raised nothing: after a failure the module is not trusted.
        if _restore(entry):
            self._give_back(key, entry)
        else:
            with self._lock:
                self.dropped += 1

    def _take(self, key: str) -> _Entry | None:
        with self._lock:
            idle = self._idle.get(key)
            if not idle:
                self.misses += 1
                return None
            entry = idle.pop()
            if not idle:
                del self._idle[key]
            self.bytes -= entry.nbytes
            self.hits += 1
            return entry

    def _give_back(self, key: str, entry: _Entry) -> None:
        with self._lock:
            if entry.nbytes > self.max_bytes:
                return
            self._idle.setdefault(key, []).append(entry)
            self._idle.move_to_end(key)
            self.bytes += entry.nbytes
            while self.bytes > self.max_bytes:
                old_key, idle = next(iter(self._idle.items()))
                old = idle.pop(0)
                if not idle:
                    del self._idle[old_key]
                self.bytes -= old.nbytes

    def stats(self) -> dict:
        """Entries, bytes and counters, for logs and tests."""
        with self._lock:
            entries = sum(len(v) for v in self._idle.values())
            return {"entries": entries, "bytes": self.bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "dropped": self.dropped}

    def clear(self) -> None:
        """Forget every idle module."""
        with self._lock:
            self._idle.clear()
            self.bytes = 0


_process_cache: ModuleCache | None = None
_process_lock = threading.Lock()


def process_cache(max_bytes: int) -> ModuleCache:
    """This process's cache (one per worker process, made on first use with the given bound)."""
    global _process_cache
    with _process_lock:
        if _process_cache is None:
            _process_cache = ModuleCache(max_bytes)
        return _process_cache
