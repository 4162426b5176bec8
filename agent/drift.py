"""On-device drift statistics: per-feature bin counts over the bundle's fixed edges.

The hot path only appends the request's arrays to a buffer; binning happens in
vectorized batches (every ``flush_rows`` rows or ``flush_bytes`` of buffered inputs, and
at each window roll), so monitoring costs a list append per inference plus amortized
numpy work, and the buffer stays small even for image inputs. Counts, n, missing, min,
max, sum and sum of squares add up exactly across windows and devices.

Measured by ``benchmarks/drift_overhead.py`` (see BENCHMARKS.md): the per-row cost is
mostly per-feature numpy calls per flush, hence the large default batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bundles.drift_reference import (
    Binner,
    ExtractorConfig,
    FeatureExtractor,
    FeatureRef,
)
from firmware_bundles.manifest import TensorSpec

Arrays = Mapping[str, npt.NDArray[Any]]
# A request waiting to be binned: (copied inputs, outputs) or its extracted features.
_Pending = tuple[tuple[Arrays, Arrays] | None, Arrays | None]


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
        flush_rows: int = 4096,
        flush_bytes: int = 1 << 20,
    ) -> None:
        self.refs = dict(refs)
        self._binners = {name: Binner(ref) for name, ref in self.refs.items()}
        self.extract = FeatureExtractor(inputs, outputs, config)
        self.flush_rows = flush_rows
        self.flush_bytes = flush_bytes
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._window = self._empty()
        self.window_start = time.time()

    def _empty(self) -> dict[str, FeatureWindow]:
        return {n: FeatureWindow(np.zeros(r.buckets, np.int64)) for n, r in self.refs.items()}

    def record(self, feeds: Arrays, results: Arrays) -> None:
        """Count one request (its inputs and the model's outputs) into the window.

        A small request is copied (binning happens later, and the caller may reuse its
        buffers once ``infer`` returns); a large one (an image, a long sequence) has its
        features extracted at once, a few numbers per row, and only those are kept.
        Binning runs every ``flush_rows`` rows, so its per-feature cost is shared.
        """
        rows, size = 1, 0
        for value in feeds.values():
            size += value.nbytes
            if value.ndim:
                rows = len(value)
        item: _Pending
        if size >= self.flush_bytes // 16:
            features = self.extract(feeds, results)
            item, size = (None, features), rows * 8 * len(features)
        else:
            copies = ({k: v.copy() for k, v in feeds.items()},
                      {k: v.copy() for k, v in results.items()})  # fmt: skip
            item = (copies, None)
        with self._lock:
            self._pending.append(item)
            self._pending_rows += rows
            self._pending_bytes += size
            if self._pending_rows < self.flush_rows and self._pending_bytes < self.flush_bytes:
                return
            batch = self._take()
        self._bin(batch)

    def _take(self) -> list[_Pending]:
        batch, self._pending = self._pending, []
        self._pending_rows = self._pending_bytes = 0
        return batch

    def _bin(self, batch: list[_Pending]) -> None:
        raw = [r for r, _ in batch if r is not None]
        parts = [f for _, f in batch if f is not None]
        if raw:
            parts.append(self.extract(_concat([f for f, _ in raw]), _concat([r for _, r in raw])))
        features = parts[0] if len(parts) == 1 else _concat(parts)
        updates = {}
        for name, values in features.items():
            binner = self._binners.get(name)
            if binner is None:
                continue
            counts, missing = binner(values)
            v = np.asarray(values, dtype=np.float64)
            finite = v[np.isfinite(v)] if missing else v  # the binner's missing
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

    def roll(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Bin what is pending, close the window, return it as plain data; the next
        window starts at ``now`` (see :attr:`window_start`)."""
        with self._lock:
            batch = self._take()
        if batch:
            self._bin(batch)
        with self._lock:
            window, self._window = self._window, self._empty()
            self.window_start = time.time() if now is None else now
        return {name: w.to_dict() for name, w in window.items()}


def is_empty(features: Mapping[str, Mapping[str, Any]]) -> bool:
    """A window that saw no traffic (nothing worth sending)."""
    return not any(stats["n"] or stats["missing"] for stats in features.values())


def _concat(parts: list[Arrays]) -> dict[str, npt.NDArray[Any]]:
    names = parts[0].keys() if parts else ()
    return {n: np.concatenate([np.atleast_1d(p[n]) for p in parts if n in p]) for n in names}
