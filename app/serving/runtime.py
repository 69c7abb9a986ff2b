"""Serving machinery started with the server: the module cache, the inference executor and the loader."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive
from torch import nn

from app.config import Settings
from app.errors import BackendUnavailable, GraftError, Unprocessable
from app.serving.cache import ModelCache
from app.serving.executor import InferenceExecutor, Stage
from app.serving.executor import Request as ExecRequest
from app.storage import ArtifactStore
from transplant.artifacts import ArtifactError, RefusedArtifact, load_module
from transplant.compose import compose

log = logging.getLogger(__name__)
PREDICT_TIMEOUT_S = 120.0
SPEC_CACHE_ENTRIES = 10_000


class BrokenArtifact(RuntimeError):
    """A stored artifact that loaded on upload no longer does (a server-side fault, not the client's)."""


class ClientGone(Exception):
    """The client disconnected while its request waited; nothing is sent back."""


@dataclass(frozen=True)
class Piece:
    """One pinned module version, as the loader needs it."""

    label: str  # "name@N"
    storage_key: str
    format: str
    arch: dict | None
    sha256: str = ""

    @property
    def key(self) -> str:
        """The loaded module's identity: the same bytes in the same format (and adapter shape) load once."""
        arch = ""
        if self.arch:
            arch = hashlib.sha256(json.dumps(self.arch, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.sha256 or self.storage_key}:{self.format}:{arch}"


@dataclass(frozen=True)
class ServingSpec:
    """Everything needed to load and call a composition, without the database."""

    id: str
    category: Piece
    adapter: Piece | None
    task: Piece
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]

    @property
    def pieces(self) -> list[Piece]:
        return [p for p in (self.category, self.adapter, self.task) if p is not None]


class Serving:
    """Loads module versions from the store once each, keeps hot ones in the LRU cache, and runs every
    forward on the process's one inference executor, batched across compositions at their task module."""

    def __init__(self, settings: Settings, store: ArtifactStore) -> None:
        self.store = store
        self.device = settings.serving_device
        self.cache = ModelCache(settings.model_cache_bytes)
        self.executor = InferenceExecutor(
            max_batch=settings.predict_max_batch, max_wait_s=settings.predict_max_wait_ms / 1000.0,
            timeout_s=PREDICT_TIMEOUT_S, device=self.device,
        )
        # Compositions are immutable, so their specs are kept: a warm predict needs no database query.
        self._specs: OrderedDict[str, ServingSpec] = OrderedDict()
        self._specs_lock = threading.Lock()

    def spec(self, composition_id: str, build: Callable[[], ServingSpec]) -> ServingSpec:
        """The serving spec of a composition, from memory or built (from the database) once."""
        with self._specs_lock:
            spec = self._specs.get(composition_id)
            if spec is not None:
                self._specs.move_to_end(composition_id)
                return spec
        spec = build()
        with self._specs_lock:
            self._specs[composition_id] = spec
            if len(self._specs) > SPEC_CACHE_ENTRIES:
                self._specs.popitem(last=False)
        return spec

    def known_spec(self, composition_id: str) -> ServingSpec | None:
        """The serving spec if this process has built it already (no database), else None."""
        with self._specs_lock:
            spec = self._specs.get(composition_id)
            if spec is not None:
                self._specs.move_to_end(composition_id)
            return spec

    def _load_piece(self, piece: Piece, folder: Path) -> nn.Module:
        path = folder / piece.storage_key.replace("/", "_")
        try:
            self.store.get_to_file(piece.storage_key, path)
        except Exception as exc:  # noqa: BLE001 - any store failure is an outage for the caller
            log.warning("artifact %s of %s could not be fetched: %s", piece.storage_key, piece.label, exc)
            raise BackendUnavailable(
                f"The artifact store could not deliver {piece.label}; retry in a moment."
            ) from None
        try:
            return load_module(path, piece.format, piece.arch)
        except RefusedArtifact as exc:
            # Checked again on every load (stored bytes can change, and the rules can tighten).
            raise Unprocessable(f"{piece.label} is refused: {exc}.") from None
        except ArtifactError as exc:
            # Stored artifacts were checked on upload; failing now means the stored bytes changed.
            raise BrokenArtifact(f"the stored artifact of {piece.label} no longer loads: {exc}") from exc

    def load(self, spec: ServingSpec) -> nn.Module:
        """A fresh composed module f → h → g from the store (not cached; on the CPU)."""
        with tempfile.TemporaryDirectory(prefix="graft-compose-") as tmp:
            folder = Path(tmp)
            f = self._load_piece(spec.category, folder)
            h = self._load_piece(spec.adapter, folder) if spec.adapter else None
            g = self._load_piece(spec.task, folder)
        return compose(f, h, g)

    def stages(self, spec: ServingSpec) -> list[Stage] | None:
        """(f, h, g) as executor stages if all three are loaded (no store, no waiting), else None."""
        modules = [self.cache.peek(p.key) for p in spec.pieces]
        if any(m is None for m in modules):
            return None
        return self._as_stages(spec, modules)

    def load_stages(self, spec: ServingSpec) -> list[Stage]:
        """(f, h, g) as executor stages, loading the pieces that are not loaded (only those)."""
        modules = [self.cache.get(p.key, lambda p=p: self._load_for_serving(p)) for p in spec.pieces]
        return self._as_stages(spec, modules)

    @staticmethod
    def _as_stages(spec: ServingSpec, modules: list[nn.Module]) -> list[Stage]:
        if spec.adapter is None:
            f, g = modules
            return [(spec.category.key, f), ("", None), (spec.task.key, g)]
        f, h, g = modules
        return [(spec.category.key, f), (spec.adapter.key, h), (spec.task.key, g)]

    def _load_for_serving(self, piece: Piece) -> nn.Module:
        global _long_lived_frozen
        with tempfile.TemporaryDirectory(prefix="graft-piece-") as tmp:
            module = self._load_piece(piece, Path(tmp))
        if self.device != "cpu":
            module = module.to(self.device)
        with _freeze_lock:
            if not _long_lived_frozen:
                # The first load of a process imports torch.export's deserializer and what it needs:
                # hundreds of thousands of objects that live as long as the process, which Python's
                # full collections would otherwise walk every few hundred requests, pausing whatever
                # is in flight. Collect once and freeze what is left out of the collector's view;
                # everything allocated afterwards is collected as usual (this first module is frozen
                # too: freed by reference counting when evicted, its cycles are not collected).
                gc.collect()
                gc.freeze()
                _long_lived_frozen = True
        return module

    async def predict(self, spec: ServingSpec, x: np.ndarray,
                      receive: Receive | None = None) -> np.ndarray:
        """Outputs for a validated batch `x` (N, *input_shape), computed on the inference executor.

        Any N: the rows go to the executor in requests of at most `max_batch` (each may share a
        forward with other requests). `receive`, the request's ASGI receive: when the client
        disconnects while the rows wait, they are dropped before their forward (ClientGone).
        """
        stages = self.stages(spec)
        if stages is None:  # a piece is not loaded: load it (only it) off the event loop
            stages = await run_in_threadpool(self.load_stages, spec)
            shape = spec.input_shape[1:]
            if all(d is not None for d in shape):
                self.executor.probe(spec.task.key, stages, tuple(int(d) for d in shape))
        batch = torch.from_numpy(x)
        step = self.executor.max_batch
        try:
            requests = [self.executor.submit(spec.task.key, stages, batch[i:i + step])
                        for i in range(0, batch.shape[0], step)]
        except RuntimeError:
            raise BackendUnavailable("The server is shutting down; retry in a moment.") from None
        try:
            ys = await self._wait(requests, receive)
        except TimeoutError:
            raise BackendUnavailable(
                f"Inference did not finish within {PREDICT_TIMEOUT_S:.0f} s; retry with a smaller batch."
            ) from None
        except (GraftError, BrokenArtifact, ClientGone):
            raise
        except Exception as exc:  # noqa: BLE001 - the pieces failed on inputs of the right shape
            raise Unprocessable(f"The composition failed on these inputs: {_short(exc)}.") from None
        y = ys[0] if len(ys) == 1 else torch.cat(ys)
        return y.numpy()

    async def _wait(self, requests: list[ExecRequest], receive: Receive | None) -> list[torch.Tensor]:
        futures = [asyncio.wrap_future(r.future) for r in requests]
        waiting = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
        if receive is None:
            y = await asyncio.wait_for(waiting, PREDICT_TIMEOUT_S)
            return [y] if len(futures) == 1 else y
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({waiting, watch}, timeout=PREDICT_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if waiting in done:
            y = waiting.result()
            return [y] if len(futures) == 1 else y
        for r in requests:  # dropped by the executor unless its forward already started
            r.reason = "disconnected" if watch in done else "deadline"
            r.future.cancel()
        waiting.cancel()
        if watch in done:
            raise ClientGone
        raise TimeoutError

    def close(self) -> None:
        self.executor.close()
        self.cache.clear()


async def _disconnected(receive: Receive) -> bool:
    """Returns once the client has disconnected (the request's body was read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return True


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def serving_of(app: FastAPI) -> Serving:
    """The app's Serving, made on first use when the lifespan did not run (e.g. a bare TestClient)."""
    serving = getattr(app.state, "serving", None)
    if serving is None:
        with _init_lock:
            serving = getattr(app.state, "serving", None)
            if serving is None:
                serving = Serving(app.state.settings, app.state.store)
                app.state.serving = serving
    return serving


_init_lock = threading.Lock()
_freeze_lock = threading.Lock()
_long_lived_frozen = False


def start(app: FastAPI) -> None:
    """Create the module cache and the inference executor."""
    serving_of(app)


def stop(app: FastAPI) -> None:
    """Finish queued predictions, stop the inference thread and drop the loaded modules."""
    serving = getattr(app.state, "serving", None)
    if serving is not None:
        serving.close()
        app.state.serving = None
