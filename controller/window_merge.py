"""Merging device windows: drift counts, telemetry sums, and which windows are in.

Pure: plain dicts and numbers in, plain dicts out. Everything a device reports per
window adds up exactly (counts, sums, min/max), so merging windows of any devices over
any time range is a sum, and a roll-up of windows is a window like any other.

A roll-up also remembers *which* windows it holds, as ranges of the devices' window
sequence numbers (:mod:`agent.window_sequence`: they only ever grow), so a window the
device sends again after its first copy was rolled up is recognised and not counted
twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

FeatureStats = dict[str, Any]  # {"counts": [...], "missing", "n", "min", "max", "sum", "sumsq"}
Ranges = list[list[int]]  # sorted, disjoint, inclusive [first, last] pairs


def bucket_start(end: float, bucket_s: float) -> float:
    """Start of the roll-up bucket of a window that ended at ``end``: bucket ``b`` holds
    the windows ending in ``(b, b + bucket_s]``, as a range query ``(since, until]``
    selects windows by their end, so a range on bucket edges takes whole buckets."""
    return (math.ceil(end / bucket_s) - 1) * bucket_s


def empty_stats(buckets: int) -> FeatureStats:
    return {
        "counts": [0] * buckets,
        "missing": 0,
        "n": 0,
        "min": None,
        "max": None,
        "sum": 0.0,
        "sumsq": 0.0,
    }


def _extreme(a: float | None, b: float | None, pick: Any) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return float(pick(a, b))


def add_stats(total: FeatureStats, part: Mapping[str, Any], feature: str = "") -> FeatureStats:
    """``total`` + ``part`` for one feature (a new dict).

    Raises:
        ValueError: the two have different bucket counts (windows of different bundles).
    """
    a, b = total["counts"], part["counts"]
    if len(a) != len(b):
        raise ValueError(
            f"feature {feature!r}: cannot add {len(b)} buckets to {len(a)} (another reference)"
        )
    return {
        "counts": [int(x) + int(y) for x, y in zip(a, b, strict=True)],
        "missing": int(total["missing"]) + int(part["missing"]),
        "n": int(total["n"]) + int(part["n"]),
        "min": _extreme(total["min"], part["min"], min),
        "max": _extreme(total["max"], part["max"], max),
        "sum": float(total["sum"]) + float(part["sum"]),
        "sumsq": float(total["sumsq"]) + float(part["sumsq"]),
    }


def merge_features(
    parts: Iterable[Mapping[str, Mapping[str, Any]]],
) -> dict[str, FeatureStats]:
    """Sum many windows' ``features`` (feature name -> stats) into one."""
    merged: dict[str, FeatureStats] = {}
    for features in parts:
        for name, stats in features.items():
            if name in merged:
                merged[name] = add_stats(merged[name], stats, name)
            else:
                merged[name] = add_stats(empty_stats(len(stats["counts"])), stats, name)
    return merged


def merge_histograms(parts: Iterable[Mapping[str, int] | None]) -> dict[str, int]:
    """Sum latency histograms in their wire form (bucket key -> count)."""
    merged: dict[str, int] = {}
    for histogram in parts:
        for key, count in (histogram or {}).items():
            merged[key] = merged.get(key, 0) + int(count)
    return merged


# ------------------------------------------------------------------ window ranges


def ranges_contain(ranges: Ranges, seq: int) -> bool:
    lo, hi = 0, len(ranges)
    while lo < hi:  # the first range whose end is >= seq
        mid = (lo + hi) // 2
        if ranges[mid][1] < seq:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(ranges) and ranges[lo][0] <= seq


def ranges_add(ranges: Ranges, seq: int) -> Ranges:
    """``ranges`` with ``seq`` in it (a new list; neighbours join into one range)."""
    if ranges_contain(ranges, seq):
        return [list(r) for r in ranges]
    out: Ranges = []
    placed = False
    for first, last in ranges:
        if placed or last < seq - 1:
            out.append([first, last])
        elif first > seq + 1:
            out.append([seq, seq])
            out.append([first, last])
            placed = True
        else:  # adjacent: extend
            out.append([min(first, seq), max(last, seq)])
            placed = True
    if not placed:
        out.append([seq, seq])
    # Extending may have made two ranges touch: join them.
    joined: Ranges = []
    for first, last in out:
        if joined and first <= joined[-1][1] + 1:
            joined[-1][1] = max(joined[-1][1], last)
        else:
            joined.append([first, last])
    return joined
