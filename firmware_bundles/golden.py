"""Golden inputs and outputs for the on-device health check.

Arrays travel as ``.npz`` bytes (never pickles: ``allow_pickle=False`` on load).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from firmware_bundles.errors import BundleError
from firmware_bundles.manifest import HealthCheck, TensorSpec
from firmware_bundles.npy_lock import NPY_LOAD_LOCK

Arrays = dict[str, npt.NDArray[np.generic]]


def encode_arrays(arrays: Mapping[str, npt.NDArray[np.generic]]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **dict(arrays))  # type: ignore[arg-type]
    return buffer.getvalue()


def decode_arrays(data: bytes, what: str = "arrays") -> Arrays:
    try:
        with NPY_LOAD_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{what} are not a valid .npz archive: {exc}") from exc


def generate_inputs(specs: Sequence[TensorSpec], *, batch: int = 1, seed: int = 0) -> Arrays:
    """Seeded inputs that fit ``specs``; free dimensions become ``batch`` (first) or 1."""
    rng = np.random.default_rng(seed)
    out: Arrays = {}
    for spec in specs:
        shape = tuple(
            (batch if i == 0 else 1) if dim is None else dim for i, dim in enumerate(spec.shape)
        )
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[spec.name] = rng.integers(0, 10, shape).astype(dtype)
    return out


@dataclass(frozen=True)
class Comparison:
    ok: bool
    worst_output: str
    max_abs_diff: float
    reason: str


def compare_outputs(
    expected: Mapping[str, npt.NDArray[np.generic]],
    actual: Mapping[str, npt.NDArray[np.generic]],
    tolerance: HealthCheck,
) -> Comparison:
    """Check ``actual`` against ``expected`` within ``atol + rtol * |expected|``."""
    worst_name, worst = "", 0.0
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            return Comparison(False, name, float("inf"), f"model produced no output {name!r}")
        if got.shape != want.shape:
            return Comparison(
                False,
                name,
                float("inf"),
                f"output {name!r} has shape {got.shape}, golden {want.shape}",
            )
        want_f = want.astype(np.float64)
        diff = np.abs(got.astype(np.float64) - want_f)
        if not np.all(np.isfinite(diff)):
            return Comparison(False, name, float("inf"), f"output {name!r} is not finite")
        max_diff = float(diff.max()) if diff.size else 0.0
        if max_diff >= worst:
            worst_name, worst = name, max_diff
        allowed = tolerance.atol + tolerance.rtol * np.abs(want_f)
        if np.any(diff > allowed):
            return Comparison(
                False,
                name,
                max_diff,
                f"output {name!r} differs from golden by up to {max_diff:.6g} "
                f"(atol {tolerance.atol}, rtol {tolerance.rtol})",
            )
    return Comparison(True, worst_name, worst, "")
