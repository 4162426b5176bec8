"""On-device drift statistics: per-feature bin counts over the bundle's fixed edges.

The hot path only appends the request's arrays to a buffer; binning happens in
vectorized batches (every ``flush_rows`` rows and at each window roll), so monitoring
costs a list append per inference plus amortized numpy work. Counts, n, missing, min,
max, sum and sum of squares add up exactly across windows and devices.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bundles.drift_reference import (
    ExtractorConfig,
    FeatureExtractor,
    FeatureRef,
    bucket_counts,
)
from firmware_bundles.manifest import TensorSpec

Arrays = Mapping[str, npt.NDArray[Any]]


@dataclass
class FeatureWindow:
    counts: npt.NDArray[np.int64]
    missing: int = 0
    n: int = 0
    lo: float = float("inf")
    hi: float = float("-inf")
    total: float = 0.0
    total_sq: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": [int(c) for c in self.counts],
            "missing": self.missing,
            "n": self.n,
            "min": self.lo if self.n else None,
            "max": self.hi if self.n else None,
            "sum": self.total,
            "sumsq": self.total_sq,
        }


class DriftMonitor:
    def __init__(
        self,
        refs: Mapping[str, FeatureRef],
        config: ExtractorConfig,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        *,
        flush_rows: int = 256,
    ) -> None:
        self.refs = dict(refs)
        self.extract = FeatureExtractor(inputs, outputs, config)
        self.flush_rows = flush_rows
        self._lock = threading.Lock()
        self._pending: list[tuple[Arrays, Arrays]] = []
        self._pending_rows = 0
        self._window = self._empty()

    def _empty(self) -> dict[str, FeatureWindow]:
        return {n: FeatureWindow(np.zeros(r.buckets, np.int64)) for n, r in self.refs.items()}

    def record(self, feeds: Arrays, results: Arrays) -> None:
        rows = next((len(v) for v in feeds.values() if np.ndim(v)), 1)
        with self._lock:
            self._pending.append((feeds, results))
            self._pending_rows += rows
            if self._pending_rows < self.flush_rows:
                return
            batch, self._pending, self._pending_rows = self._pending, [], 0
        self._bin(batch)

    def _bin(self, batch: list[tuple[Arrays, Arrays]]) -> None:
        feeds = _concat([f for f, _ in batch])
        results = _concat([r for _, r in batch])
        features = self.extract(feeds, results)
        updates = {}
        for name, values in features.items():
            ref = self.refs.get(name)
            if ref is None:
                continue
            counts, missing = bucket_counts(ref, values)
            v = np.asarray(values, dtype=np.float64)
            finite = v[~np.isnan(v)]
            updates[name] = (counts, missing, finite)
        with self._lock:
            for name, (counts, missing, finite) in updates.items():
                w = self._window[name]
                w.counts += counts
                w.missing += missing
                w.n += int(finite.size)
                if finite.size:
                    w.lo = min(w.lo, float(finite.min()))
                    w.hi = max(w.hi, float(finite.max()))
                    w.total += float(finite.sum())
                    w.total_sq += float(np.dot(finite, finite))

    def roll(self) -> dict[str, dict[str, Any]]:
        """Bin what is pending, close the window, return it as plain data."""
        with self._lock:
            batch, self._pending, self._pending_rows = self._pending, [], 0
        if batch:
            self._bin(batch)
        with self._lock:
            window, self._window = self._window, self._empty()
        return {name: w.to_dict() for name, w in window.items()}


def _concat(parts: list[Arrays]) -> dict[str, npt.NDArray[Any]]:
    names = parts[0].keys() if parts else ()
    return {n: np.concatenate([np.atleast_1d(p[n]) for p in parts if n in p]) for n in names}
