"""The hot-path half of data capture: a sampled call's copies, held until written.

:class:`LiveCapture` is one capture being sampled. The inference threads add to it
(:meth:`LiveCapture.take`, under its lock, only for calls the random draw picked); the
agent's worker takes what waits (:meth:`LiveCapture.take_pending`) and writes it.
Counters include what waits in memory, so the cap holds before anything reaches disk.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.capture_spool import TIMESTAMP, Signature, Spooled

# The hot path wakes the worker to write a chunk once this much waits in memory;
# smaller amounts are written at the next tick (a crash loses them uncounted).
WAKE_ROWS = 4096
WAKE_BYTES = 1 << 20


@dataclass
class Sample:
    rows: int
    arrays: dict[str, npt.NDArray[Any]]  # "input/x", "output/y", "timestamp"
    nbytes: int
    signature: Signature

    def head(self, rows: int) -> Sample:
        if rows >= self.rows:
            return self
        arrays = {k: v[:rows] for k, v in self.arrays.items()}
        return Sample(rows, arrays, sum(a.nbytes for a in arrays.values()), self.signature)


def snapshot(
    feeds: Mapping[str, npt.NDArray[Any]], outputs: Mapping[str, npt.NDArray[Any]], now: float
) -> Sample | None:
    """Copies of one call's tensors, or None if they do not share a batch axis."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    rows = -1
    for prefix, tensors in (("input", feeds), ("output", outputs)):
        for name, value in tensors.items():
            array = np.array(value, copy=True, order="C")
            if array.ndim == 0 or (rows >= 0 and array.shape[0] != rows):
                return None
            rows = array.shape[0]
            arrays[f"{prefix}/{name}"] = array
    if rows <= 0:
        return None
    arrays[TIMESTAMP] = np.full(rows, now, dtype=np.float64)
    signature = {k: (v.dtype.str, v.shape[1:]) for k, v in arrays.items()}
    return Sample(rows, arrays, sum(a.nbytes for a in arrays.values()), signature)


class LiveCapture:
    """A capture being sampled: shared by the hot path and the worker, under ``lock``."""

    def __init__(self, spooled: Spooled, max_bytes: int) -> None:
        request = spooled.request
        self.capture_id = request.capture_id
        self.rate = request.rate
        self.expires_at = request.expires_at
        self.max_rows = request.max_samples
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.bundle = spooled.bundle_sha256
        self.signature = spooled.signature
        self.taken_rows = spooled.rows
        self.taken_bytes = spooled.bytes
        self.full = self.taken_rows >= self.max_rows
        self.pending: list[Sample] = []
        self.pending_rows = 0
        self.pending_bytes = 0
        self.woken = False
        self.skipped = 0

    def take(self, sample: Sample, bundle: str) -> bool:
        """Keep ``sample`` if it fits; True when the worker should be woken."""
        with self.lock:
            if self.full or (self.bundle is not None and self.bundle != bundle):
                return False
            signature = sample.signature
            if self.signature is not None and signature != self.signature:
                self.skipped += 1  # another model's tensors, or a free dimension changed
                return False
            part = sample.head(min(sample.rows, self.max_rows - self.taken_rows))
            if self.taken_bytes + part.nbytes > self.max_bytes:
                self.full = True
            else:
                self.bundle, self.signature = bundle, signature
                self.pending.append(part)
                self.pending_rows += part.rows
                self.pending_bytes += part.nbytes
                self.taken_rows += part.rows
                self.taken_bytes += part.nbytes
                self.full = self.taken_rows >= self.max_rows
            wake = self.full or self.pending_rows >= WAKE_ROWS or self.pending_bytes >= WAKE_BYTES
            if wake and not self.woken:
                self.woken = True
                return True
            return False

    def take_pending(self) -> list[Sample]:
        with self.lock:
            pending, self.pending = self.pending, []
            self.pending_rows = self.pending_bytes = 0
            self.woken = False
            return pending
