"""Input data for simulated devices: the reference distribution, shifted on demand.

Drift scenarios need devices that see the data a model was built for and then, from a
known time, something else::

    data = TabularData(shifts=[Shift(devices=range(10), column=3, delta=1.0, at=t)])
    fleet.feed(rate_per_device=10, data=data)

Every float input ``[N, F]`` gets standard-normal rows (what a reference drawn with
``standard_normal`` describes); a :class:`Shift` adds ``delta`` to one column on some
devices from time ``at``. Each device draws from its own seeded generator.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bundles.manifest import TensorSpec

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Shift:
    """From ``at`` (epoch seconds) devices ``devices`` (fleet indices) see column
    ``column`` of input ``name`` moved by ``delta``."""

    devices: Iterable[int]
    column: int
    delta: float
    at: float
    name: str = "x"
    _set: frozenset[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_set", frozenset(self.devices))

    def applies(self, index: int, now: float) -> bool:
        return index in self._set and now >= self.at


class TabularData:
    """Inputs for ``Fleet.feed(data=...)``: ``data(index, specs, now) -> feeds``."""

    def __init__(self, shifts: Sequence[Shift] = (), *, batch: int = 1, seed: int = 0) -> None:
        self.shifts = tuple(shifts)
        self.batch = batch
        self.seed = seed
        self._rngs: dict[int, np.random.Generator] = {}
        self._lock = threading.Lock()

    def __call__(self, index: int, specs: Sequence[TensorSpec], now: float) -> Arrays:
        with self._lock:
            rng = self._rngs.setdefault(index, np.random.default_rng(self.seed * 100_003 + index))
        feeds: Arrays = {}
        for spec in specs:
            shape = tuple(self.batch if d is None else d for d in spec.shape)
            values = rng.standard_normal(shape)
            for shift in self.shifts:
                if shift.name == spec.name and shift.applies(index, now):
                    values[..., shift.column] += shift.delta
            feeds[spec.name] = values.astype(spec.dtype)
        return feeds
