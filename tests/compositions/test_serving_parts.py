"""The batcher and the model cache on their own: batching, fallback, LRU bound, single loads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch
from torch import nn

from app.compositions.batcher import BatcherPool, _Item, run_batch
from app.compositions.cache import ModelCache


def _in_thread(pool: BatcherPool, key: str, forward, x: torch.Tensor) -> Future:
    """Submit from another thread, as a request thread does (a lone request runs in its caller)."""
    outer: Future = Future()
    threading.Thread(target=lambda: outer.set_result(pool.submit(key, forward, x).result(10))).start()
    return outer


def _wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_requests_queued_during_forwards_share_the_next_one() -> None:
    pool = BatcherPool(max_batch=16, max_wait_s=0.0)
    release, calls = threading.Event(), []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        release.wait(10)
        return x * 2

    try:
        first = _in_thread(pool, "c", forward, torch.full((1, 2), 1.0))
        _wait_until(lambda: calls == [1])  # the lone request ran at once, in its own thread
        rest = [pool.submit("c", forward, torch.full((1 + i % 2, 2), float(i))) for i in range(9)]
        release.set()
        assert torch.equal(first.result(10), torch.full((1, 2), 2.0))
        for i, fut in enumerate(rest):
            assert torch.equal(fut.result(10), torch.full((1 + i % 2, 2), 2.0 * i))
        # The lone one, what the batcher thread took first, then everything queued meanwhile at once.
        assert sum(calls) == 14 and len(calls) <= 3
        assert pool.totals["requests"] == 10 and pool.totals["batches"] == len(calls)
    finally:
        pool.close()


def test_max_batch_is_never_exceeded() -> None:
    pool = BatcherPool(max_batch=4, max_wait_s=0.01)
    calls: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        time.sleep(0.01)
        return x + 1

    try:
        with ThreadPoolExecutor(8) as ex:
            sizes = [1, 3, 3, 3, 2, 2, 1]
            futures = list(ex.map(lambda n: pool.submit("c", forward, torch.zeros(n, 1)), sizes))
        assert all(torch.equal(f.result(10), torch.ones(f.result().shape)) for f in futures)
        assert sum(calls) == 15 and max(calls) <= 4
    finally:
        pool.close()


def test_a_failing_batch_is_retried_request_by_request() -> None:
    calls: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:  # like a module exported with a fixed batch of 1
        calls.append(x.shape[0])
        if x.shape[0] != 1:
            raise RuntimeError("expected batch size 1")
        if float(x[0, 0]) < 0:
            raise ValueError("negative input")
        return x * 3

    good, bad = _Item(torch.full((1, 1), 2.0)), _Item(torch.full((1, 1), -1.0))
    totals = {"batches": 0, "requests": 0, "inputs": 0}
    run_batch("c", forward, [good, bad], totals)
    assert good.future.result(0).item() == 6.0
    with pytest.raises(ValueError, match="negative input"):
        bad.future.result(0)
    assert calls == [2, 1, 1]


def test_a_lone_request_runs_in_its_own_thread() -> None:
    pool = BatcherPool(max_batch=4, max_wait_s=1.0)
    seen: list[threading.Thread] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(threading.current_thread())
        return x

    try:
        assert pool.submit("c", forward, torch.ones(1, 1)).done()  # no hand-off, no max_wait
        assert seen == [threading.current_thread()] and pool.active() == 0
    finally:
        pool.close()


def test_idle_batchers_retire_and_come_back() -> None:
    pool = BatcherPool(max_batch=4, max_wait_s=0.0, idle_s=0.05)
    release = threading.Event()

    def slow(x: torch.Tensor) -> torch.Tensor:
        release.wait(10)
        return x

    try:
        first = _in_thread(pool, "c", slow, torch.ones(1, 1))
        _wait_until(lambda: pool._running.get("c") == 1)
        queued = pool.submit("c", slow, torch.full((1, 1), 2.0))  # busy: goes to the batcher thread
        assert pool.active() == 1
        release.set()
        assert first.result(10).item() == 1.0 and queued.result(10).item() == 2.0
        _wait_until(lambda: pool.active() == 0)
        assert pool.submit("c", lambda x: -x, torch.ones(1, 1)).result(10).item() == -1.0
    finally:
        pool.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        pool.submit("c", lambda x: x, torch.ones(1, 1))


def _linear(n: int) -> nn.Module:
    return nn.Linear(n, 1, bias=False)  # n float32 weights = 4n bytes


def test_cache_keeps_the_most_recent_within_its_bytes() -> None:
    cache = ModelCache(max_bytes=4 * 250)
    loads: list[str] = []

    def loader(key: str, n: int):
        def load() -> nn.Module:
            loads.append(key)
            return _linear(n)
        return load

    a = cache.get("a", loader("a", 100))
    assert cache.get("a", loader("a", 100)) is a
    cache.get("b", loader("b", 100))
    cache.get("a", loader("a", 100))  # a is now the most recent
    cache.get("c", loader("c", 100))  # 300 weights > 250: b, the least recent, goes
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.stats()["bytes"] == 800 and cache.stats()["evictions"] == 1
    big = cache.get("big", loader("big", 1000))  # larger than the bound: served, not kept
    assert isinstance(big, nn.Linear) and "big" not in cache and "a" in cache
    assert loads == ["a", "b", "c", "big"]


def test_concurrent_misses_load_once() -> None:
    cache = ModelCache(max_bytes=1 << 20)
    started, loads = threading.Event(), []

    def load() -> nn.Module:
        loads.append(1)
        started.set()
        time.sleep(0.05)
        return _linear(4)

    results: list[nn.Module] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", load))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(loads) == 1 and len(results) == 6 and all(r is results[0] for r in results)
