"""The inference executor, the learned batch cap and the module cache on their own."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from app.serving.cache import ModelCache
from app.serving.curve import ThroughputCurve, choose_cap, size_bucket
from app.serving.executor import InferenceExecutor, Request, run_stages


def _wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


class Recorder(nn.Module):
    """y = x * factor, recording the batch size of each call."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor, self.calls = factor, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(x.shape[0]))
        return x * self.factor


def _one_stage(name: str, module) -> list:  # noqa: ANN001
    return [(name, module)]


def _learned_rising(ex: InferenceExecutor, group: str) -> None:
    """A curve that rises to the hard bound, far faster than any real forward: the cap stays max_batch."""
    for _ in range(3):
        ex.curve(group).record(16, 1e-9)


def test_requests_queued_during_a_forward_share_the_next_one() -> None:
    ex = InferenceExecutor(max_batch=16, max_wait_s=0.0)
    m = Recorder(2.0)
    _learned_rising(ex, "c")
    try:
        with ex.run_lock:  # the executor is busy: everything below queues
            first = ex.submit("c", _one_stage("c", m), torch.full((1, 2), 1.0))
            _wait_until(lambda: ex.queued() == 0)  # taken by the thread, which waits for the lock
            rest = [ex.submit("c", _one_stage("c", m), torch.full((1 + i % 2, 2), float(i)))
                    for i in range(9)]
        assert torch.equal(first.future.result(10), torch.full((1, 2), 2.0))
        for i, r in enumerate(rest):
            assert torch.equal(r.future.result(10), torch.full((1 + i % 2, 2), 2.0 * i))
        assert m.calls == [1, 13]  # the first, then everything queued meanwhile at once
        assert ex.totals["requests"] == 10 and ex.totals["batches"] == 2
    finally:
        ex.close()


def test_max_batch_is_never_exceeded_and_a_big_request_runs_alone() -> None:
    ex = InferenceExecutor(max_batch=4, max_wait_s=0.01)
    m = Recorder(1.0)
    _learned_rising(ex, "c")
    try:
        with ex.run_lock:
            reqs = [ex.submit("c", _one_stage("c", m), torch.ones(n, 1)) for n in (1, 3, 2, 2, 1, 6)]
        for r in reqs:
            assert r.future.result(10).shape[0] == r.rows
        assert max(m.calls[:-1]) <= 4 and 6 in m.calls and sum(m.calls) == 15
    finally:
        ex.close()


def test_a_failing_batch_is_retried_request_by_request() -> None:
    calls: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:  # like a module exported with a fixed batch of 1
        calls.append(x.shape[0])
        if x.shape[0] != 1:
            raise RuntimeError("expected batch size 1")
        if float(x[0, 0]) < 0:
            raise ValueError("negative input")
        return x * 3

    ex = InferenceExecutor(max_batch=4, max_wait_s=0.0)
    _learned_rising(ex, "c")
    try:
        with ex.run_lock:
            first = ex.submit("c", _one_stage("c", forward), torch.full((1, 1), 1.0))
            _wait_until(lambda: ex.queued() == 0)
            good = ex.submit("c", _one_stage("c", forward), torch.full((1, 1), 2.0))
            bad = ex.submit("c", _one_stage("c", forward), torch.full((1, 1), -1.0))
        assert first.future.result(10).item() == 3.0 and good.future.result(10).item() == 6.0
        with pytest.raises(ValueError, match="negative input"):
            bad.future.result(10)
        assert calls == [1, 2, 1, 1]
    finally:
        ex.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        ex.submit("c", _one_stage("c", forward), torch.ones(1, 1))


def test_compositions_served_alternately_share_one_thread_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    nets = {name: nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3)).eval() for name in "ab"}
    x = torch.randn(5, 8)
    with torch.inference_mode():
        want = {name: net(x) for name, net in nets.items()}
    forwarders: list[str] = []

    def traced(name: str):  # noqa: ANN202
        def forward(t: torch.Tensor) -> torch.Tensor:
            forwarders.append(threading.current_thread().name)
            return nets[name](t)
        return forward

    before = set(threading.enumerate())
    ex = InferenceExecutor(max_batch=8, max_wait_s=0.0)
    try:
        for i in range(40):
            name = "ab"[i % 2]
            got = ex.submit(name, _one_stage(name, traced(name)), x).future.result(10)
            assert torch.allclose(got, want[name], atol=1e-6)
        started = [t for t in set(threading.enumerate()) - before if t.name.startswith("graft-")]
        # One inference thread for both compositions, and every forward ran on it.
        assert [t.name for t in started] == ["graft-inference"] and set(forwarders) == {"graft-inference"}
        assert len(ex.groups()) == 2
    finally:
        ex.close()


def test_gone_and_late_requests_are_dropped_before_their_forward() -> None:
    ex = InferenceExecutor(max_batch=8, max_wait_s=0.0, timeout_s=60.0)
    m = Recorder(1.0)
    _learned_rising(ex, "c")
    try:
        with ex.run_lock:
            first = ex.submit("c", _one_stage("c", m), torch.ones(1, 1))
            _wait_until(lambda: ex.queued() == 0)
            gone = ex.submit("c", _one_stage("c", m), torch.ones(1, 1))
            gone.reason = "disconnected"
            assert gone.future.cancel()
            late = ex.submit("c", _one_stage("c", m), torch.ones(1, 1), timeout_s=0.01)
            kept = ex.submit("c", _one_stage("c", m), torch.ones(2, 1))
            time.sleep(0.05)
        assert kept.future.result(10).shape == (2, 1) and first.future.result(10).shape == (1, 1)
        with pytest.raises(TimeoutError):
            late.future.result(10)
        assert m.calls == [1, 2]  # neither the gone nor the late request reached a forward
        assert ex.totals["dropped_disconnected"] == 1 and ex.totals["dropped_deadline"] == 1
    finally:
        ex.close()


def test_rows_of_different_categories_and_adapters_share_one_task_module_forward() -> None:
    torch.manual_seed(1)
    fs = [nn.Sequential(nn.Linear(6, 10), nn.GELU()).eval() for _ in range(2)]
    hs = [nn.Linear(10, 10).eval() for _ in range(3)]
    g = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    g_calls: list[int] = []
    g_hook = g.register_forward_hook(lambda _m, inp, _o: g_calls.append(inp[0].shape[0]))
    # (f, h): both categories, three adapters, one composition with no adapter
    combos = [(0, 0), (0, 1), (1, 2), (1, None), (0, 0)]
    xs = [torch.randn(1 + i % 3, 6) for i in range(len(combos))]
    requests = [
        Request(x, [(f"f{f}", fs[f]), (f"h{h}" if h is not None else "", hs[h] if h is not None else None),
                    ("g", g)], float("inf"))
        for x, (f, h) in zip(xs, combos, strict=True)
    ]
    got = run_stages(requests, torch.device("cpu"))
    assert g_calls == [sum(x.shape[0] for x in xs)]  # g ran once, for the rows of all requests
    g_hook.remove()
    with torch.inference_mode():
        alone = [g((hs[h] if h is not None else nn.Identity())(fs[f](x)))
                 for x, (f, h) in zip(xs, combos, strict=True)]
    for a, b in zip(got, alone, strict=True):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-5


def test_cap_selection_on_synthetic_curves() -> None:
    # A CPU whose network slows down with the batch: batch 1 serves fastest.
    assert choose_cap({1: 38.0, 2: 33.0, 4: 27.0, 8: 22.0, 16: 19.0}, 64) == 1
    # A GPU-like curve that rises, then falls past 32: the cap is where it stops rising.
    assert choose_cap({1: 100.0, 2: 190.0, 4: 370.0, 8: 700.0, 16: 1200.0, 32: 1210.0, 64: 1190.0}, 64) == 32
    # A flat, noisy curve (a small network): the size that served best, not the first near it.
    assert choose_cap({1: 82.0, 2: 118.0, 4: 85.0, 8: 121.0, 16: 110.0}, 64) == 8
    # Still rising at the largest size measured: try twice that, within the hard bound.
    assert choose_cap({1: 10.0, 2: 19.0, 4: 36.0}, 64) == 8
    assert choose_cap({1: 10.0, 2: 19.0, 4: 36.0}, 6) == 6
    assert choose_cap({}, 64) == 64  # nothing measured yet: batch what is there
    assert [size_bucket(n) for n in (1, 2, 3, 4, 7, 8, 63, 64)] == [1, 2, 2, 4, 4, 8, 32, 64]


def test_the_curve_learns_from_served_batches() -> None:
    curve = ThroughputCurve()
    curve.record(1, 1 / 40)
    curve.record(8, 8 / 20)
    assert curve.cap(64) == 64  # too few batches of each size to tell yet
    curve.record(1, 1 / 4000)  # one lucky and one slowed batch: the median of each size holds
    curve.record(8, 8 / 2)
    for _ in range(5):
        curve.record(1, 1 / 40)   # 40 inputs/s
        curve.record(8, 8 / 20)   # 20 inputs/s
        curve.record(16, 16 / 18)
    assert curve.cap(64) == 1
    limits = [curve.limit(64) for _ in range(32)]
    assert set(limits) == {1, 2} and limits.count(2) == 2  # now and then a batch above the cap


def test_the_load_probe_measures_a_curve_while_idle() -> None:
    ex = InferenceExecutor(max_batch=8, max_wait_s=0.0)
    net = nn.Linear(4, 2).eval()
    try:
        ex.probe("g", _one_stage("g", net), (4,))
        _wait_until(lambda: ex.groups()["g"]["inputs_per_s"] and ex._probing() is None)
        curve = ex.groups()["g"]["inputs_per_s"]
        assert set(curve) <= {1, 2, 4, 8} and 1 in curve and ex.totals["probe_forwards"] >= 3
        assert ex.totals["batches"] == 0  # probes are not served batches
    finally:
        ex.close()


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
