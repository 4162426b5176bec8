"""Local inference: the Python API applications call, with telemetry on every call.

The active model can be swapped atomically while requests are in flight: a request
runs to the end on the model it started with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.drift import DriftMonitor
from agent.errors import InvalidInputError, NoModelError
from agent.telemetry import TelemetryWindow
from firmware_bundles.manifest import Manifest, TensorSpec
from firmware_bundles.runtimes import ModelRunner
from firmware_bundles.wire import BundleRef

log = logging.getLogger(__name__)

# Sees every successful call: (bundle sha256, inputs, outputs). Must be cheap.
Tap = Callable[[str, Mapping[str, npt.NDArray[Any]], Mapping[str, npt.NDArray[Any]]], None]


@dataclass(frozen=True)
class ActiveModel:
    runner: ModelRunner
    manifest: Manifest
    ref: BundleRef
    drift: DriftMonitor | None = None


class InferenceService:
    """Runs inference on the active model and records it in the telemetry window."""

    def __init__(self, window: TelemetryWindow, tap: Tap | None = None) -> None:
        self._active: ActiveModel | None = None
        self._swap_lock = threading.Lock()
        self.window = window
        self.tap = tap  # data capture (agent.capture.CaptureRecorder.offer)

    @property
    def active(self) -> ActiveModel | None:
        return self._active

    def swap(self, model: ActiveModel | None) -> ActiveModel | None:
        """Install ``model`` as the one serving; return the one it replaced."""
        with self._swap_lock:
            old, self._active = self._active, model
        return old

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
        """Run the active model on ``inputs`` (name -> array-like).

        Raises:
            NoModelError: no model is active yet.
            InvalidInputError: a missing or unknown input, or one of the wrong shape.
        """
        model = self._active
        if model is None:
            raise NoModelError("no model is active on this device yet")
        # Bad input is the caller's error, not the model's: it is refused before the
        # timed section, so it never counts against a model on trial.
        feeds = _prepare(model, inputs)
        started = time.perf_counter()
        ok = False
        try:
            outputs = model.runner.run(feeds)
            ok = True
        finally:
            self.window.record((time.perf_counter() - started) * 1000.0, ok)
        if model.drift is not None:
            model.drift.record(feeds, outputs)
        if self.tap is not None:
            try:
                self.tap(model.ref.manifest_sha256, feeds, outputs)
            except Exception:  # capture is a side line: the caller still gets its answer
                log.exception("capture tap failed")
        return outputs


def _prepare(model: ActiveModel, inputs: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
    specs = model.runner.inputs
    if len(inputs) != len(specs) or any(s.name not in inputs for s in specs):
        _raise_for_names(specs, inputs)
    feeds: dict[str, npt.NDArray[Any]] = {}
    for spec in specs:
        value = inputs[spec.name]
        if isinstance(value, np.ndarray) and value.dtype == spec.dtype:
            array = value
        else:
            try:
                array = np.asarray(value, dtype=spec.dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(
                    f"input {spec.name!r} is not a {spec.dtype} array: {exc}"
                ) from exc
        shape = array.shape
        if len(shape) != len(spec.shape) or any(
            want is not None and got != want for got, want in zip(shape, spec.shape, strict=True)
        ):
            raise InvalidInputError(
                f"input {spec.name!r} has shape {list(shape)}, model expects "
                f"{[d if d is not None else 'N' for d in spec.shape]}"
            )
        feeds[spec.name] = array
    return feeds


def _raise_for_names(specs: tuple[TensorSpec, ...], inputs: Mapping[str, Any]) -> None:
    unknown = set(inputs) - {s.name for s in specs}
    if unknown:
        raise InvalidInputError(
            f"unknown input(s) {sorted(unknown)}; model takes {[s.name for s in specs]}"
        )
    missing = [s.name for s in specs if s.name not in inputs]
    raise InvalidInputError(f"missing input(s) {missing}")
