"""The learned batch cap: inputs/s per batch size, measured while serving, and where it stops rising.

On a CPU a network can get slower per input as its batch grows (EfficientNet-Lite0 at 224×224 on 2
cores: ~38 inputs/s at batch 1, 17.5 at batch 23); on a GPU the curve rises. A fixed maximum turns
load into bigger, slower batches on the first and leaves throughput unused on the second, so each
batch group measures its own curve and caps its batches where the curve stops rising.
"""

from __future__ import annotations

import threading

RISE = 0.95
"""A bigger batch is worth forming only if it gives more than this fraction of the best inputs/s."""
EMA = 0.3
"""Weight of a new measurement in a size's running inputs/s."""
EXPLORE_EVERY = 16
"""Every this many batches a group may form one batch of twice its cap, to measure above it."""


def size_bucket(rows: int) -> int:
    """The power of two a batch of `rows` inputs is counted under (1, 2, 4, 8, ...)."""
    return 1 << (max(1, rows).bit_length() - 1)


def choose_cap(curve: dict[int, float], max_batch: int) -> int:
    """The batch cap for a curve {batch size: inputs/s}: the smallest size within RISE of the best.

    No measurement: `max_batch` (batch what is there, as a fixed maximum would). When the best is the
    largest size measured, the cap is twice that (up to `max_batch`), so the curve is measured beyond.
    """
    if not curve:
        return max_batch
    best = max(curve.values())
    sizes = sorted(curve)
    cap = next(s for s in sizes if curve[s] >= RISE * best)
    if cap == sizes[-1]:
        cap *= 2
    return max(1, min(max_batch, cap))


class ThroughputCurve:
    """Inputs/s per batch-size bucket of one batch group (a running average per bucket)."""

    def __init__(self) -> None:
        self._rate: dict[int, float] = {}
        self._batches: dict[int, int] = {}
        self._lock = threading.Lock()
        self.formed = 0

    def record(self, rows: int, seconds: float) -> None:
        if seconds <= 0:
            return
        size, rate = size_bucket(rows), rows / seconds
        with self._lock:
            old = self._rate.get(size)
            self._rate[size] = rate if old is None else (1 - EMA) * old + EMA * rate
            self._batches[size] = self._batches.get(size, 0) + 1

    def cap(self, max_batch: int) -> int:
        with self._lock:
            return choose_cap(dict(self._rate), max_batch)

    def limit(self, max_batch: int) -> int:
        """Rows the next batch may hold: the cap, or twice it every EXPLORE_EVERY batches."""
        self.formed += 1
        cap = self.cap(max_batch)
        if self.formed % EXPLORE_EVERY == 0:
            return min(max_batch, 2 * cap)
        return cap

    def snapshot(self) -> dict[int, float]:
        with self._lock:
            return dict(sorted(self._rate.items()))

    def batches(self) -> dict[int, int]:
        with self._lock:
            return dict(sorted(self._batches.items()))
