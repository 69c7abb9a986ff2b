"""One inference executor per process: every forward of every composition runs on one thread.

Each composition used to have its own batcher thread, and each thread that calls torch starts its
own OpenMP team: two compositions served at once put twice as many busy threads as cores on the
machine, and every forward of both took twice as long (bench/results/serving.md). Here requests of
all compositions are queued in one executor, whose single thread runs one forward at a time with
torch's threads: the cores are shared, never oversubscribed.

Requests are queued per *batch group*. Requests of one group may share a forward: a request's rows
go through its `stages` in order, and rows of requests whose stage has the same key run through that
stage together (stacked), then are split back. With stages (f, h, g) and the group keyed by g,
requests of different compositions that end in one task module form one batch: rows of one f run
together, then those of one h, and g runs once for all of them (issue 27).

The thread takes the groups with queued requests in turn. From the group's queue it takes what is
there up to the group's learned cap (curve.py; `max_batch` is the hard bound), after waiting up to
`max_wait` for company when the group's previous batch held more than one request. A request whose
client went away (its future cancelled) or whose deadline passed is dropped before its forward runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from app.ops import metrics
from app.serving.curve import ThroughputCurve, size_bucket

log = logging.getLogger(__name__)

Stage = tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]
"""(key, module): rows of requests whose stage has the same key run through it together; None = identity."""
PROBE_BUDGET_S = 1.0
"""Most forward time the load probe of one group may take (it runs only while nothing is queued)."""
PROBE_REPEATS = 3
"""Forwards per batch size in the load probe (enough for the size to count, curve.EVIDENCE)."""


@dataclass
class Request:
    x: torch.Tensor  # (n, *input_shape)
    stages: Sequence[Stage]
    deadline: float
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    reason: str = "deadline"  # why the future was cancelled, if it is

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


@dataclass
class Group:
    """The queue and the learned batch cap of one batch group."""

    key: str
    queue: deque[Request] = field(default_factory=deque)
    curve: ThroughputCurve = field(default_factory=ThroughputCurve)
    last_requests: int = 0
    probe: tuple[Sequence[Stage], tuple[int, ...]] | None = None  # stages and one input's shape
    probe_size: int = 1
    probe_spent: float = 0.0


class InferenceExecutor:
    """The process's inference thread and the queues of its batch groups."""

    def __init__(self, *, max_batch: int, max_wait_s: float, timeout_s: float = 120.0,
                 device: str = "cpu") -> None:
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self.timeout_s = timeout_s
        self.device = torch.device(device)
        self._groups: dict[str, Group] = {}
        self._turns: deque[str] = deque()  # groups with queued requests, in turn
        self._cond = threading.Condition()
        self._closed = False
        self.run_lock = threading.Lock()
        """Held around every forward (and probe step): nothing else computes while it is held."""
        # Served so far (statistics, not accounting).
        self.totals = {"batches": 0, "requests": 0, "inputs": 0,
                       "dropped_disconnected": 0, "dropped_deadline": 0, "probe_forwards": 0}
        self.thread = threading.Thread(target=self._loop, name="graft-inference", daemon=True)
        self.thread.start()

    # -- the request side ------------------------------------------------------------------------

    def submit(self, group: str, stages: Sequence[Stage], x: torch.Tensor,
               timeout_s: float | None = None) -> Request:
        """Queue `x` (n, *input_shape) of batch group `group`; `.future` gets its (n, *output_shape)."""
        request = Request(x, stages, time.monotonic() + (timeout_s or self.timeout_s))
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            g = self._groups.get(group)
            if g is None:
                g = self._groups[group] = Group(group)
            if not g.queue:
                self._turns.append(group)
            g.queue.append(request)
            self._cond.notify()
        return request

    def curve(self, group: str) -> ThroughputCurve:
        """The throughput curve of `group` (made empty if the group is new)."""
        with self._cond:
            g = self._groups.get(group)
            if g is None:
                g = self._groups[group] = Group(group)
            return g.curve

    def probe(self, group: str, stages: Sequence[Stage], input_shape: tuple[int, ...]) -> None:
        """Measure the group's curve at growing batch sizes with random inputs, while nothing is queued."""
        with self._cond:
            g = self._groups.get(group)
            if g is None:
                g = self._groups[group] = Group(group)
            if g.probe is None and g.probe_size == 1:
                g.probe = (stages, input_shape)
                self._cond.notify()

    # -- the thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._turns and not self._closed and self._probing() is None:
                    self._cond.wait()
                if not self._turns:
                    if self._closed:
                        return
                    g = self._probing()
                    work, probe = None, g.probe
                else:
                    g = self._groups[self._turns.popleft()]
                    work = self._take(g)
                    if g.queue:
                        self._turns.append(g.key)
            if work is None:
                self._probe_step(g, *probe)
            elif work:
                self._run(g, work)

    def _probing(self) -> Group | None:
        return next((g for g in self._groups.values() if g.probe is not None), None)

    def _take(self, g: Group) -> list[Request]:
        """The next batch of `g` (called holding the condition; may wait up to max_wait for company)."""
        limit = min(self.max_batch, g.curve.limit(self.max_batch))
        if g.last_requests > 1 and self.max_wait_s > 0:
            until = time.monotonic() + self.max_wait_s
            while sum(r.rows for r in g.queue) < limit and not self._closed:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        batch: list[Request] = []
        rows, now = 0, time.monotonic()
        while g.queue:
            r = g.queue[0]
            if batch and rows + r.rows > limit:
                break
            g.queue.popleft()
            if r.future.cancelled() or not r.future.set_running_or_notify_cancel():
                self._dropped(r.reason)
                continue
            if now > r.deadline:
                r.future.set_exception(TimeoutError("the request's deadline passed before its forward"))
                self._dropped("deadline")
                continue
            batch.append(r)
            rows += r.rows
        if batch:
            g.last_requests = len(batch)
        return batch

    def _dropped(self, reason: str) -> None:
        self.totals[f"dropped_{reason}"] += 1
        metrics.PREDICT_DROPPED.labels(reason).inc()

    def _run(self, g: Group, batch: list[Request]) -> None:
        self.totals["batches"] += 1
        self.totals["requests"] += len(batch)
        rows = sum(r.rows for r in batch)
        self.totals["inputs"] += rows
        try:
            with self.run_lock:
                started = time.perf_counter()
                outputs = run_stages(batch, self.device)
                spent = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            # A module that cannot take a stacked batch (e.g. exported with a fixed batch size) still
            # answers each request on its own; each gets its own result or error.
            log.info("batched forward of group %s failed (%s); running its %d requests one by one",
                     g.key[:12], exc, len(batch))
            for r in batch:
                self._run_one_again(g, r)
            return
        g.curve.record(rows, spent)
        self._show(g, rows)
        metrics.FORWARD_LATENCY.observe(spent)
        metrics.BATCH_REQUESTS.observe(len(batch))
        metrics.BATCH_INPUTS.observe(rows)
        done = time.perf_counter()
        for r, y in zip(batch, outputs, strict=True):
            metrics.PREDICT_LATENCY.observe(done - r.submitted)
            r.future.set_result(y)

    def _show(self, g: Group, rows: int) -> None:
        """The group's cap and its inputs/s at this batch size, in /metrics."""
        size = size_bucket(rows)
        metrics.BATCH_RATE.labels(g.key[:16], str(size)).set(g.curve.snapshot().get(size, 0.0))
        metrics.BATCH_CAP.labels(g.key[:16]).set(g.curve.cap(self.max_batch))

    def _run_one_again(self, g: Group, r: Request) -> None:
        try:
            with self.run_lock:
                y = run_stages([r], self.device)[0]
        except Exception as exc:  # noqa: BLE001 - this request's own error
            r.future.set_exception(exc)
            return
        r.future.set_result(y)

    def _probe_step(self, g: Group, stages: Sequence[Stage], shape: tuple[int, ...]) -> None:
        """PROBE_REPEATS forwards of `g` at its next batch size; the probe ends when the curve falls,
        at `max_batch`, or before a step that would overrun its budget."""
        n = g.probe_size
        spent = 0.0
        try:
            x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(n))
            with self.run_lock:
                for _ in range(PROBE_REPEATS):
                    started = time.perf_counter()
                    run_stages([Request(x, stages, float("inf"))], self.device)
                    spent = time.perf_counter() - started
                    self.totals["probe_forwards"] += 1
                    g.curve.record(n, spent)
                    g.probe_spent += spent
            self._show(g, n)
        except Exception as exc:  # noqa: BLE001 - a module that cannot take this batch ends the probe
            log.info("load probe of group %s stopped at batch %d: %s", g.key[:12], n, exc)
            g.probe = None
            return
        curve = g.curve.snapshot()
        falling = len(curve) >= 3 and max(curve.values()) > max(list(curve.values())[-2:]) / 0.8
        next_step = 2 * spent * PROBE_REPEATS  # about twice the rows of the last forward, repeated
        with self._cond:
            if n * 2 > self.max_batch or g.probe_spent + next_step > PROBE_BUDGET_S or falling:
                g.probe = None
            g.probe_size = n * 2

    # -- state -----------------------------------------------------------------------------------

    def groups(self) -> dict[str, dict]:
        """Per batch group: the learned cap, the curve (inputs/s per batch size) and batches per size."""
        with self._cond:
            groups = list(self._groups.values())
        return {
            g.key: {"cap": g.curve.cap(self.max_batch), "inputs_per_s": g.curve.snapshot(),
                    "batches": g.curve.batches(), "queued": len(g.queue)}
            for g in groups
        }

    def queued(self) -> int:
        with self._cond:
            return sum(len(g.queue) for g in self._groups.values())

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting requests, finish what is queued, and join the thread."""
        with self._cond:
            self._closed = True
            for g in self._groups.values():
                g.probe = None
            self._cond.notify_all()
        self.thread.join(timeout)


def run_stages(batch: list[Request], device: torch.device) -> list[torch.Tensor]:
    """Each request's output: its rows through its stages, stacked per stage key, split back (on CPU)."""
    outs = [r.x.to(device, non_blocking=True) if r.x.device != device else r.x for r in batch]
    for s in range(len(batch[0].stages)):
        by_key: dict[str, list[int]] = {}
        for i, r in enumerate(batch):
            by_key.setdefault(r.stages[s][0], []).append(i)
        for idx in by_key.values():
            module = batch[idx[0]].stages[s][1]
            if module is None:
                continue
            parts = [outs[i] for i in idx]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)  # (rows, *shape)
            with torch.inference_mode():
                y = module(x)
            if not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]:
                raise RuntimeError("a module's output does not keep the batch dimension first")
            if len(parts) == 1:
                outs[idx[0]] = y
                continue
            start = 0
            for i, part in zip(idx, parts, strict=True):
                outs[i] = y[start:start + part.shape[0]]
                start += part.shape[0]
    return [y.cpu() if y.device.type != "cpu" else y for y in outs]
