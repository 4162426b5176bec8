"""Latency histograms that merge exactly: log-spaced buckets shared by agent and controller.

Latencies go into buckets 4% wide starting at 1 µs, so any percentile is within about 2%
of the exact value, and histograms from any windows and devices merge by adding counts.
The agent fills them; the controller merges them fleet-wide (per bundle, per rollout
wave) and reads percentiles off the sum, which averaging per-window p95s cannot do.

On the wire a histogram is a JSON object ``{"<bucket index>": count}`` (JSON keys are
strings); :func:`parse_histogram` checks one strictly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from firmware_bundles.errors import WireError

_BASE_MS = 0.001
_GROWTH = math.log(1.04)
# Index of a 1-hour latency is ~590; anything far past that is not a latency.
MAX_BUCKET = 2000
MAX_BUCKETS_PER_HISTOGRAM = 1000


def bucket_of(latency_ms: float) -> int:
    if latency_ms <= _BASE_MS:
        return 0
    return min(int(math.log(latency_ms / _BASE_MS) / _GROWTH) + 1, MAX_BUCKET)


def bucket_value(index: int) -> float:
    """Representative latency of a bucket: the geometric middle of its edges."""
    if index == 0:
        return _BASE_MS
    return float(_BASE_MS * math.exp((index - 0.5) * _GROWTH))


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
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


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """The sum of ``histograms`` (exact: counts add)."""
    total: dict[int, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            total[index] = total.get(index, 0) + count
    return total


def to_wire(histogram: Mapping[int, int]) -> dict[str, int]:
    return {str(index): count for index, count in sorted(histogram.items()) if count}


def parse_histogram(raw: object, what: str) -> dict[int, int]:
    """``{"<index>": count}`` -> ``{index: count}``; raise :class:`WireError` if malformed."""
    if not isinstance(raw, dict):
        raise WireError(f"{what} must be an object of bucket -> count, got {raw!r:.80}")
    if len(raw) > MAX_BUCKETS_PER_HISTOGRAM:
        raise WireError(f"{what} has {len(raw)} buckets, over {MAX_BUCKETS_PER_HISTOGRAM}")
    parsed: dict[int, int] = {}
    for key, count in raw.items():
        if not isinstance(key, str) or not key.isdigit() or int(key) > MAX_BUCKET:
            raise WireError(f"{what} has bucket {key!r:.20}: want an integer 0..{MAX_BUCKET}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise WireError(f"{what}[{key}] must be a count >= 0, got {count!r:.20}")
        if count:
            parsed[int(key)] = count
    return parsed
