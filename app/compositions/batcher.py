"""Dynamic batching: concurrent predict requests of one composition share one forward pass.

Each composition being served has one batcher thread. Requests (from FastAPI's threadpool) put their
input on its queue and wait on a future. The thread takes what is queued, up to `max_batch` inputs,
stacks them, runs one forward under `torch.inference_mode()` and hands each request its rows.

A lone request for an idle composition (nothing queued or running) runs its forward in its own
thread, with no hand-off to the batcher thread and no `max_wait`: a quiet composition pays no batching
latency. Waiting for company: once the previous batch held more than one request (there is concurrent
load) the batcher thread waits up to `max_wait` for more to join before running. Under load requests
also pile up while the previous forward runs, which is where most of the batching comes from.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from app.ops import metrics

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Item:
    x: torch.Tensor  # (n, *input_shape)
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class Batcher:
    """The batching thread of one composition."""

    def __init__(
        self, key: str, forward: Forward, *, max_batch: int, max_wait_s: float, idle_s: float,
        retire: Callable[[Batcher], bool], busy: Callable[[str, int], None],
        totals: dict[str, int] | None = None,
    ) -> None:
        self.key = key
        self.forward = forward
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self.idle_s = idle_s
        self.queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._retire = retire
        self._busy = busy
        self._carry: deque[_Item] = deque()
        self._last_batch_requests = 0
        self.totals = totals if totals is not None else {"batches": 0, "requests": 0, "inputs": 0}
        self.thread = threading.Thread(target=self._loop, name=f"graft-batcher-{key[:8]}", daemon=True)

    def _next(self, timeout: float | None) -> _Item | None:
        if self._carry:
            return self._carry.popleft()
        if timeout is not None and timeout <= 0:
            return self.queue.get_nowait()
        return self.queue.get(timeout=timeout)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._next(self.idle_s)
            except queue.Empty:
                if self._retire(self):
                    return
                continue
            if first is None:
                return
            batch, rows = [first], first.rows
            wait = self.max_wait_s if self._last_batch_requests > 1 else 0.0
            deadline = time.monotonic() + wait
            while rows < self.max_batch:
                try:
                    item = self._next(deadline - time.monotonic())
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                if rows + item.rows > self.max_batch:
                    self._carry.append(item)
                    break
                batch.append(item)
                rows += item.rows
            self._last_batch_requests = len(batch)
            self._busy(self.key, 1)
            try:
                run_batch(self.key, self.forward, batch, self.totals)
            finally:
                self._busy(self.key, -1)

    def idle(self) -> bool:
        """Nothing queued and no sign of concurrent load (approximate: read without the thread's help)."""
        return self.queue.empty() and not self._carry and self._last_batch_requests <= 1


def run_batch(key: str, forward: Forward, batch: list[_Item], totals: dict[str, int]) -> None:
    """One forward for the stacked inputs of `batch`; each request's future gets its rows or the error."""
    totals["batches"] += 1
    totals["requests"] += len(batch)
    totals["inputs"] += sum(item.rows for item in batch)
    try:
        x = batch[0].x if len(batch) == 1 else torch.cat([item.x for item in batch])
        started = time.perf_counter()
        with torch.inference_mode():
            y = forward(x)  # (rows, *output_shape)
        metrics.FORWARD_LATENCY.observe(time.perf_counter() - started)
        metrics.BATCH_REQUESTS.observe(len(batch))
        metrics.BATCH_INPUTS.observe(int(x.shape[0]))
        if not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]:
            raise RuntimeError("the composition's output does not keep the batch dimension first")
    except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
        if len(batch) == 1:
            batch[0].future.set_exception(exc)
            return
        # A module that cannot take this stacked batch (e.g. exported with a fixed batch size)
        # still answers each request on its own; each gets its own result or error.
        log.info("batched forward of %s failed (%s); running its %d requests one by one",
                 key, exc, len(batch))
        for item in batch:
            run_batch(key, forward, [item], totals)
        return
    start, done = 0, time.perf_counter()
    for item in batch:
        metrics.PREDICT_LATENCY.observe(done - item.submitted)
        item.future.set_result(y[start:start + item.rows])
        start += item.rows


class BatcherPool:
    """The batchers of all compositions being served; an idle batcher's thread ends after `idle_s`."""

    def __init__(self, *, max_batch: int, max_wait_s: float, idle_s: float = 60.0) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.idle_s = idle_s
        self._batchers: dict[str, Batcher] = {}
        self._running: dict[str, int] = {}  # forwards in progress per key (inline or batcher thread)
        self._lock = threading.Lock()
        self._closed = False
        # Served so far (approximate under races: statistics, not accounting).
        self.totals = {"batches": 0, "requests": 0, "inputs": 0}

    def submit(self, key: str, forward: Forward, x: torch.Tensor, *, inline: bool = True) -> Future:
        """Queue `x` (n, *input_shape) for composition `key`; the future gets its (n, *output_shape).

        `inline=False` (a caller on the event loop) never runs the forward in the calling thread.
        """
        item = _Item(x)
        with self._lock:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            batcher = self._batchers.get(key)
            inline = inline and self._running.get(key, 0) == 0 and (batcher is None or batcher.idle())
            if inline:
                self._running[key] = 1
            else:
                if batcher is None:
                    batcher = Batcher(
                        key, forward, max_batch=self.max_batch, max_wait_s=self.max_wait_s,
                        idle_s=self.idle_s, retire=self._retire, busy=self._mark_busy, totals=self.totals,
                    )
                    self._batchers[key] = batcher
                    batcher.thread.start()
                # Queued under the pool lock: a batcher retiring at this moment cannot miss the item.
                batcher.queue.put(item)
        if inline:
            try:
                run_batch(key, forward, [item], self.totals)
            finally:
                self._mark_busy(key, -1)
        return item.future

    def run_alone(self, key: str, forward: Forward, x: torch.Tensor) -> Future:
        """One forward of `x` alone, in the calling thread (no batching); its finished future."""
        item = _Item(x)
        with self._lock:
            if self._closed:
                raise RuntimeError("the server is shutting down")
        self._mark_busy(key, 1)
        try:
            run_batch(key, forward, [item], self.totals)
        finally:
            self._mark_busy(key, -1)
        return item.future

    def _mark_busy(self, key: str, delta: int) -> None:
        with self._lock:
            n = self._running.get(key, 0) + delta
            if n > 0:
                self._running[key] = n
            else:
                self._running.pop(key, None)

    def _retire(self, batcher: Batcher) -> bool:
        with self._lock:
            if not batcher.queue.empty() or batcher._carry:
                return False
            if self._batchers.get(batcher.key) is batcher:
                del self._batchers[batcher.key]
            return True

    def active(self) -> int:
        with self._lock:
            return len(self._batchers)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting requests, let every batcher finish what is queued, and join the threads."""
        with self._lock:
            self._closed = True
            batchers = list(self._batchers.values())
            self._batchers.clear()
        for b in batchers:
            b.queue.put(None)
        for b in batchers:
            b.thread.join(timeout)
