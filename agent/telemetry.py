"""Telemetry windows: inference and error counts plus a latency histogram.

Pure and cheap on the hot path: recording one inference is a lock, two adds and one
``log`` call. Latencies go into log-spaced buckets (4% wide), so percentiles are within
about 2% of the exact value and windows from any devices merge by adding counts.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass

_BASE_MS = 0.001
_GROWTH = math.log(1.04)


def bucket_of(latency_ms: float) -> int:
    if latency_ms <= _BASE_MS:
        return 0
    return int(math.log(latency_ms / _BASE_MS) / _GROWTH) + 1


def bucket_value(index: int) -> float:
    """Representative latency of a bucket: the geometric middle of its edges."""
    if index == 0:
        return _BASE_MS
    return float(_BASE_MS * math.exp((index - 0.5) * _GROWTH))


def percentile(histogram: Counter[int], q: float) -> float | None:
    """The ``q``-quantile (0..1) of the latencies counted in ``histogram``."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(max(histogram))


@dataclass(frozen=True)
class WindowSnapshot:
    window_start: float
    window_end: float
    inference_count: int
    error_count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    histogram: dict[int, int]


class TelemetryWindow:
    """Thread-safe accumulator; :meth:`roll` closes the window and opens the next."""

    def __init__(self, now: float) -> None:
        self._lock = threading.Lock()
        self._start = now
        self._count = 0
        self._errors = 0
        self._hist: Counter[int] = Counter()

    def record(self, latency_ms: float, ok: bool) -> None:
        index = bucket_of(latency_ms)
        with self._lock:
            self._count += 1
            if ok:
                self._hist[index] += 1
            else:
                self._errors += 1

    def roll(self, now: float) -> WindowSnapshot:
        with self._lock:
            hist, count, errors, start = self._hist, self._count, self._errors, self._start
            self._hist, self._count, self._errors, self._start = Counter(), 0, 0, now
        return WindowSnapshot(
            window_start=start,
            window_end=now,
            inference_count=count,
            error_count=errors,
            p50_ms=percentile(hist, 0.50),
            p95_ms=percentile(hist, 0.95),
            p99_ms=percentile(hist, 0.99),
            histogram=dict(hist),
        )
