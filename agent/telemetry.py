"""Telemetry windows: inference and error counts plus a latency histogram.

Pure and cheap on the hot path: recording one inference is a lock, two adds and one
``log`` call. The histogram's buckets (:mod:`firmware_bundles.latency_histogram`) are
shared with the controller, which merges windows from any devices by adding counts.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from firmware_bundles.latency_histogram import bucket_of, percentile


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
