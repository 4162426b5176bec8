"""Evaluation and calibration inputs: loaded from ``.npz`` files or generated from the spec.

An :class:`EvalSet` is a list of feeds (``{input name: array}``) that each run in one
``InferenceSession.run`` call, plus optional labels, one per sample.

Layout of an ``.npz`` file: one array per model input, keyed by the input's name (a model
with a single input also accepts a file with a single array under any name), and an
optional ``labels`` array of integer class ids. Each input array is either

* a batch, of the model's rank, with samples along axis 0 (fed in chunks: the model's
  fixed batch size, or up to ``batch_size`` rows when the batch dimension is symbolic); or
* a stack of samples, one rank higher than the model input, each fed on its own (for
  models without a batch axis, or with a fixed batch of 1 written per sample).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from compress.errors import InputsError
from firmware_bundles.npy_lock import NPY_LOAD_LOCK

LABELS_KEY = "labels"
DEFAULT_BATCH_SIZE = 32
DEFAULT_GENERATED_SAMPLES = 16

Array = npt.NDArray[Any]
Feed = dict[str, Array]
Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype, and dims (int fixed, str symbolic, None unknown)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[Dim, ...]

    def concrete_shape(self, unknown: int = 1) -> tuple[int, ...]:
        """The shape with every symbolic or unknown dimension set to ``unknown``."""
        return tuple(d if isinstance(d, int) else unknown for d in self.shape)


@dataclass
class EvalSet:
    """Inputs to evaluate or calibrate on.

    Attributes:
        feeds: Feeds to run, each one ``InferenceSession.run`` call.
        labels: Integer class ids, one per sample, or None.
        source: Where the inputs came from (a path, or ``generated(seed=...)``).
        samples: Total number of samples across all feeds.
        stacked: True when each feed is one sample without a batch axis of its own, so
            outputs are stacked on a new axis rather than concatenated on axis 0.
        batch_axis_free: True when axis 0 of each feed is a symbolic batch axis, so one
            row can be fed alone.
    """

    feeds: list[Feed]
    labels: Array | None
    source: str
    samples: int
    stacked: bool
    batch_axis_free: bool = False

    def latency_feed(self) -> Feed:
        """The feed to time: one sample when the batch axis allows it, else the first feed.

        Edge devices mostly run one request at a time, so latency is for one sample.
        """
        first = self.feeds[0]
        if self.stacked:
            return first
        rows = {arr.shape[0] for arr in first.values() if arr.ndim > 0}
        if len(rows) == 1 and rows.pop() > 1 and self.batch_axis_free:
            return {name: arr[:1] for name, arr in first.items()}
        return first


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers).

    Raises:
        InputsError: An input is not a tensor.
    """
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise InputsError(f"model input {value.name!r} is not a tensor; only tensors supported")
        tensor_type = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        dims: list[Dim] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param:
                dims.append(str(dim.dim_param))
            else:
                dims.append(None)
        specs.append(InputSpec(value.name, dtype, tuple(dims)))
    return specs


def generate_inputs(
    specs: list[InputSpec], *, samples: int = DEFAULT_GENERATED_SAMPLES, seed: int = 0
) -> EvalSet:
    """Generate random inputs that fit the spec, one sample per feed.

    Symbolic or unknown dimensions become 1. Floats are standard normal, integers are 0 or
    1 (safe as indices into any embedding table), booleans are fair coin flips.

    Args:
        specs: The model's inputs, from :func:`input_specs`.
        samples: How many feeds to generate.
        seed: Seed of the random generator, so two runs see the same inputs.

    Returns:
        The generated inputs, without labels.

    Raises:
        InputsError: ``samples`` is below 1, or an input has a dtype we cannot generate.
    """
    if samples < 1:
        raise InputsError(f"samples must be at least 1, got {samples}")
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(samples):
        feed: Feed = {}
        for spec in specs:
            shape = spec.concrete_shape()
            kind = spec.dtype.kind
            if kind == "f":
                feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif kind in "iu":
                feed[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
            elif kind == "b":
                feed[spec.name] = rng.random(shape) < 0.5
            else:
                raise InputsError(
                    f"cannot generate values for input {spec.name!r} of dtype {spec.dtype}; "
                    "pass an .npz file instead"
                )
        feeds.append(feed)
    # Each generated feed is a single sample with symbolic dims at 1: a batch axis, if the
    # model has one, has size 1, which stacking squeezes back out.
    return EvalSet(feeds, None, f"generated(seed={seed})", samples, stacked=True)


def load_npz(
    path: str | os.PathLike[str], specs: list[InputSpec], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> EvalSet:
    """Load inputs (and optional ``labels``) from an ``.npz`` file.

    Args:
        path: The ``.npz`` file.
        specs: The model's inputs, from :func:`input_specs`.
        batch_size: Largest chunk fed at once when the batch dimension is symbolic.

    Returns:
        The inputs, cast to the model's dtypes, chunked into feeds.

    Raises:
        InputsError: The file is missing or unreadable, an input is missing, or an array's
            rank, shape, dtype or sample count does not fit the model.
    """
    npz_path = Path(path)
    if not npz_path.is_file():
        raise InputsError(f"inputs file not found: {str(npz_path)!r}")
    try:
        with NPY_LOAD_LOCK, np.load(npz_path, allow_pickle=False) as archive:
            arrays = {key: np.asarray(archive[key]) for key in archive.files}
    except Exception as exc:
        raise InputsError(
            f"{str(npz_path)!r} is not a readable .npz file: {type(exc).__name__}: {exc}"
        ) from exc
    return eval_set_from_arrays(arrays, specs, source=str(npz_path), batch_size=batch_size)


def eval_set_from_arrays(
    arrays: dict[str, Array],
    specs: list[InputSpec],
    *,
    source: str = "arrays",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> EvalSet:
    """Build an :class:`EvalSet` from in-memory arrays laid out as in an ``.npz`` file.

    Raises:
        InputsError: As for :func:`load_npz`.
    """
    labels = arrays.pop(LABELS_KEY, None)
    if len(specs) == 1 and len(arrays) == 1 and specs[0].name not in arrays:
        arrays = {specs[0].name: next(iter(arrays.values()))}
    missing = [spec.name for spec in specs if spec.name not in arrays]
    if missing:
        raise InputsError(
            f"{source}: missing input(s) {missing}; the file has {sorted(arrays)} "
            f"and the model needs {[s.name for s in specs]}"
        )
    cast = {spec.name: _cast(arrays[spec.name], spec, source) for spec in specs}
    stacked_flags = {spec.name: _layout(cast[spec.name], spec, source) for spec in specs}
    if len(set(stacked_flags.values())) > 1:
        raise InputsError(f"{source}: inputs mix batched and stacked layouts: {stacked_flags}")
    stacked = next(iter(stacked_flags.values()))
    counts = {name: int(arr.shape[0]) for name, arr in cast.items()}
    if len(set(counts.values())) != 1:
        raise InputsError(f"{source}: inputs have different sample counts: {counts}")
    samples = next(iter(counts.values()))
    if samples == 0:
        raise InputsError(f"{source}: inputs hold 0 samples")
    if labels is not None:
        labels = _check_labels(labels, samples, source)

    if stacked:
        feeds = [{name: arr[i] for name, arr in cast.items()} for i in range(samples)]
        return EvalSet(feeds, labels, source, samples, stacked=True)

    fixed = {spec.shape[0] for spec in specs if spec.shape and isinstance(spec.shape[0], int)}
    if fixed:
        chunk = int(fixed.pop())
        if samples % chunk:
            raise InputsError(
                f"{source}: {samples} samples is not a multiple of the model's fixed "
                f"batch size {chunk}"
            )
        free = False
    else:
        if batch_size < 1:
            raise InputsError(f"batch_size must be at least 1, got {batch_size}")
        chunk = min(samples, batch_size)
        free = True
    feeds = [
        {name: arr[start : start + chunk] for name, arr in cast.items()}
        for start in range(0, samples, chunk)
    ]
    return EvalSet(feeds, labels, source, samples, stacked=False, batch_axis_free=free)


def _cast(arr: Array, spec: InputSpec, source: str) -> Array:
    if arr.dtype == spec.dtype:
        return arr
    same_family = (arr.dtype.kind == "f" and spec.dtype.kind == "f") or (
        arr.dtype.kind in "iu" and spec.dtype.kind in "iu"
    )
    if not same_family:
        raise InputsError(
            f"{source}: input {spec.name!r} has dtype {arr.dtype}, the model wants {spec.dtype}"
        )
    return arr.astype(spec.dtype)


def _layout(arr: Array, spec: InputSpec, source: str) -> bool:
    """Check an array against the spec; True when it is a stack of samples."""
    rank = len(spec.shape)
    if arr.ndim == rank:
        per_row, expected = arr.shape[1:], spec.shape[1:]
        stacked = False
        if rank == 0:
            raise InputsError(f"{source}: input {spec.name!r} is a scalar; give one per sample")
    elif arr.ndim == rank + 1:
        per_row, expected = arr.shape[1:], spec.shape
        stacked = True
    else:
        raise InputsError(
            f"{source}: input {spec.name!r} has shape {arr.shape}; the model input has rank "
            f"{rank} {spec.shape}, so the array must have rank {rank} or {rank + 1}"
        )
    for axis, (have, want) in enumerate(zip(per_row, expected, strict=True)):
        if isinstance(want, int) and have != want:
            raise InputsError(
                f"{source}: input {spec.name!r} has shape {arr.shape}, which does not fit the "
                f"model's {spec.shape} (axis {axis + 1}: {have} != {want})"
            )
    return stacked


def _check_labels(labels: Array, samples: int, source: str) -> Array:
    column = labels.ndim == 2 and labels.shape[1] == 1
    flat = labels.reshape(-1) if column else labels
    if flat.ndim != 1 or flat.dtype.kind not in "iu":
        raise InputsError(
            f"{source}: 'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}"
        )
    if flat.shape[0] != samples:
        raise InputsError(
            f"{source}: {flat.shape[0]} labels for {samples} samples; need one label per sample"
        )
    return flat.astype(np.int64)
