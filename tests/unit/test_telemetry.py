from __future__ import annotations

from collections import Counter

import numpy as np

from agent.telemetry import TelemetryWindow
from firmware_bundles.latency_histogram import bucket_of, percentile


def test_percentiles_are_within_two_percent_of_exact() -> None:
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(mean=0.0, sigma=1.0, size=5000)
    window = TelemetryWindow(now=0.0)
    for value in latencies:
        window.record(float(value), ok=True)
    snap = window.roll(now=5.0)
    assert snap.inference_count == 5000 and snap.error_count == 0
    for got, q in ((snap.p50_ms, 50), (snap.p95_ms, 95), (snap.p99_ms, 99)):
        exact = float(np.percentile(latencies, q))
        assert got is not None and abs(got - exact) / exact < 0.03, (q, got, exact)


def test_windows_merge_by_adding_counts() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(size=800), rng.lognormal(mean=1.0, size=1200)
    hist: Counter[int] = Counter()
    for part in (a, b):
        window = TelemetryWindow(now=0.0)
        for value in part:
            window.record(float(value), ok=True)
        hist.update(window.roll(now=1.0).histogram)
    merged = np.concatenate([a, b])
    exact = float(np.percentile(merged, 95))
    assert abs(percentile(hist, 0.95) - exact) / exact < 0.03  # type: ignore[operator]
    assert sum(hist.values()) == 2000


def test_roll_starts_an_empty_window_and_counts_errors() -> None:
    window = TelemetryWindow(now=0.0)
    window.record(1.0, ok=False)
    first = window.roll(now=1.0)
    assert (first.inference_count, first.error_count, first.p50_ms) == (1, 1, None)
    second = window.roll(now=2.0)
    assert (second.window_start, second.inference_count) == (1.0, 0)
    assert bucket_of(0.0) == 0
