"""Serving machinery started with the server: the model cache, the batchers and the piece loader."""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
import torch
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from torch import nn

from app.compositions.batcher import BatcherPool
from app.compositions.cache import ModelCache
from app.config import Settings
from app.errors import BackendUnavailable, GraftError, Unprocessable
from app.storage import ArtifactStore
from transplant.artifacts import ArtifactError, RefusedArtifact, load_module
from transplant.compose import compose

log = logging.getLogger(__name__)
PREDICT_TIMEOUT_S = 120.0
SPEC_CACHE_ENTRIES = 10_000


class BrokenArtifact(RuntimeError):
    """A stored artifact that loaded on upload no longer does (a server-side fault, not the client's)."""


@dataclass(frozen=True)
class Piece:
    """One pinned module version, as the loader needs it."""

    label: str  # "name@N"
    storage_key: str
    format: str
    arch: dict | None


@dataclass(frozen=True)
class ServingSpec:
    """Everything needed to load and call a composition, without the database."""

    id: str
    category: Piece
    adapter: Piece | None
    task: Piece
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]


class Serving:
    """Loads compositions from the store, keeps hot ones in the LRU cache and batches their calls."""

    def __init__(self, settings: Settings, store: ArtifactStore) -> None:
        self.store = store
        self.cache = ModelCache(settings.model_cache_bytes)
        self.pool = BatcherPool(
            max_batch=settings.predict_max_batch, max_wait_s=settings.predict_max_wait_ms / 1000.0
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
        """A fresh composed module f → h → g from the store (not cached)."""
        with tempfile.TemporaryDirectory(prefix="graft-compose-") as tmp:
            folder = Path(tmp)
            f = self._load_piece(spec.category, folder)
            h = self._load_piece(spec.adapter, folder) if spec.adapter else None
            g = self._load_piece(spec.task, folder)
        return compose(f, h, g)

    def module(self, spec: ServingSpec) -> nn.Module:
        """The composed module, from the cache or loaded into it."""
        return self.cache.get(spec.id, lambda: self._load_for_serving(spec))

    def _load_for_serving(self, spec: ServingSpec) -> nn.Module:
        global _long_lived_frozen
        module = self.load(spec)
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

    async def predict(self, spec: ServingSpec, x: np.ndarray) -> np.ndarray:
        """Outputs for a validated batch `x` (N, *input_shape); no request thread waits, the forward
        runs off the event loop.

        With batching (max batch > 1) the input goes to the composition's batcher thread and the
        loop awaits its future. Without (max batch 1), each request's forward runs in a thread of the
        pool on its own, as a server without a batcher runs them: in parallel, one input each.
        """
        forward = self._forward_of(spec)
        batch = torch.from_numpy(x)
        try:
            if self.pool.max_batch == 1:
                with anyio.fail_after(PREDICT_TIMEOUT_S):
                    y = await run_in_threadpool(self._forward_alone, spec.id, forward, batch)
            else:
                try:
                    future = self.pool.submit(spec.id, forward, batch, inline=False)
                except RuntimeError:
                    raise BackendUnavailable("The server is shutting down; retry in a moment.") from None
                y = await asyncio.wait_for(asyncio.wrap_future(future), PREDICT_TIMEOUT_S)
        except TimeoutError:
            raise BackendUnavailable(
                f"Inference did not finish within {PREDICT_TIMEOUT_S:.0f} s; retry with a smaller batch."
            ) from None
        except (GraftError, BrokenArtifact):
            raise
        except Exception as exc:  # noqa: BLE001 - the pieces failed on inputs of the right shape
            raise Unprocessable(f"The composition failed on these inputs: {_short(exc)}.") from None
        return y.numpy()

    def _forward_of(self, spec: ServingSpec) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(batch: torch.Tensor) -> torch.Tensor:
            return self.module(spec)(batch)

        return forward

    def _forward_alone(self, key: str, forward: Callable, x: torch.Tensor) -> torch.Tensor:
        return self.pool.run_alone(key, forward, x).result()

    def close(self) -> None:
        self.pool.close()
        self.cache.clear()


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
    """Create the model cache and the batcher pool."""
    serving_of(app)


def stop(app: FastAPI) -> None:
    """Finish queued predictions, stop the batcher threads and drop the loaded modules."""
    serving = getattr(app.state, "serving", None)
    if serving is not None:
        serving.close()
        app.state.serving = None
