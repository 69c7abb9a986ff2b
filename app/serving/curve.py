"""The learned batch cap: inputs/s per batch size, measured while serving, and where it stops rising.

On a CPU a network can get slower per input as its batch grows (EfficientNet-Lite0 at 224×224 on 2
cores: ~38 inputs/s at batch 1, 17.5 at batch 23); on a GPU the curve rises. A fixed maximum turns
load into bigger, slower batches on the first and leaves throughput unused on the second, so each
batch group measures its own curve and caps its batches where the curve stops rising.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque

WINDOW = 8
"""A size's inputs/s is the median of its last this many batches (robust to a forward slowed by
other work on the machine, and to one that was lucky)."""
EVIDENCE = 3
"""Batches a size needs before its inputs/s counts against growing the batch past it."""
EXPLORE_EVERY = 16
"""Every this many batches a group may form one batch of twice its cap, to measure above it."""


def size_bucket(rows: int) -> int:
    """The power of two a batch of `rows` inputs is counted under (1, 2, 4, 8, ...)."""
    return 1 << (max(1, rows).bit_length() - 1)


def choose_cap(curve: dict[int, float], max_batch: int) -> int:
    """The batch cap for a curve {batch size: inputs/s}: the size where inputs/s peak.

    Beyond it throughput stops rising, so bigger batches would only add latency (or, on a CPU whose
    network slows down with the batch, lose throughput too). No measurement: `max_batch` (batch what
    is there, as a fixed maximum would). When the peak is the largest size measured, the cap is twice
    that (up to `max_batch`), so the curve is measured beyond it.
    """
    if not curve:
        return max_batch
    sizes = sorted(curve)
    cap = max(sizes, key=lambda s: (curve[s], -s))  # the peak; the smaller size on a tie
    if cap == sizes[-1]:
        cap *= 2
    return max(1, min(max_batch, cap))


class ThroughputCurve:
    """Inputs/s per batch-size bucket of one batch group (the median of each bucket's last batches)."""

    def __init__(self) -> None:
        self._recent: dict[int, deque[float]] = {}
        self._batches: dict[int, int] = {}
        self._lock = threading.Lock()
        self.formed = 0

    def record(self, rows: int, seconds: float) -> None:
        if seconds <= 0:
            return
        size = size_bucket(rows)
        with self._lock:
            self._recent.setdefault(size, deque(maxlen=WINDOW)).append(rows / seconds)
            self._batches[size] = self._batches.get(size, 0) + 1

    def cap(self, max_batch: int) -> int:
        """choose_cap over the sizes with enough batches (the others are still to be measured)."""
        with self._lock:
            known = {s: statistics.median(r) for s, r in self._recent.items() if len(r) >= EVIDENCE}
        return choose_cap(known, max_batch)

    def limit(self, max_batch: int) -> int:
        """Rows the next batch may hold: the cap, or twice it every EXPLORE_EVERY batches."""
        self.formed += 1
        cap = self.cap(max_batch)
        if self.formed % EXPLORE_EVERY == 0:
            return min(max_batch, 2 * cap)
        return cap

    def snapshot(self) -> dict[int, float]:
        with self._lock:
            return {s: statistics.median(r) for s, r in sorted(self._recent.items())}

    def batches(self) -> dict[int, int]:
        with self._lock:
            return dict(sorted(self._batches.items()))
