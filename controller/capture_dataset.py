"""Capture uploads checked against their bundle, and merged into one dataset.

An upload is the device's ``.npz``: ``input/<name>`` and ``output/<name>`` for every
tensor of the bundle's model, rows along axis 0, a float64 ``timestamp`` per row and
the 0-d ``bundle_sha256`` the rows came from. :func:`check_upload` compares what the
headers declare with the bundle's manifest; nothing is loaded before it passes.

The export holds every upload's rows, concatenated in device order, plus per row the
``device_id``, ``bundle_sha256``, ``model_name`` and ``model_version``: a retraining job
can tell where each row came from, and leave out a device or a version.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bundles.errors import DatasetError
from firmware_bundles.manifest import Manifest, TensorSpec
from firmware_bundles.npz_dataset import ArrayInfo, Column, load_array

TIMESTAMP = "timestamp"
BUNDLE = "bundle_sha256"
ROW_LABELS = ("device_id", "bundle_sha256", "model_name", "model_version")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _shape(spec: TensorSpec) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in spec.shape) + "]"


def tensor_specs(manifest: Manifest) -> dict[str, TensorSpec]:
    """Upload array name -> the model tensor it holds."""
    specs = {f"input/{t.name}": t for t in manifest.inputs}
    specs.update({f"output/{t.name}": t for t in manifest.outputs})
    return specs


def bundle_of(path: Path, arrays: dict[str, ArrayInfo]) -> str:
    """The ``bundle_sha256`` an inspected upload names."""
    info = arrays.get(BUNDLE)
    if info is None or info.shape != () or info.dtype.kind != "U":
        raise DatasetError(f"needs a 0-d string array {BUNDLE!r} naming the bundle sampled")
    value = str(load_array(path, BUNDLE))
    if not _SHA_RE.match(value):
        raise DatasetError(f"{BUNDLE} {value[:80]!r} is not a sha256 hex digest")
    return value


def check_upload(arrays: dict[str, ArrayInfo], manifest: Manifest, *, max_samples: int) -> int:
    """Check names, dtypes and shapes against ``manifest``; return the row count.

    Raises:
        DatasetError: the first mismatch, naming the array and what the model expects.
    """
    specs = tensor_specs(manifest)
    wanted = {*specs, TIMESTAMP, BUNDLE}
    missing, extra = sorted(wanted - set(arrays)), sorted(set(arrays) - wanted)
    bundle = f"bundle {manifest.name}@{manifest.version}"
    if missing:
        raise DatasetError(f"missing arrays {missing} ({bundle} has {sorted(specs)})")
    if extra:
        raise DatasetError(f"unexpected arrays {extra[:10]} ({bundle} has {sorted(specs)})")
    stamps = arrays[TIMESTAMP]
    if stamps.dtype != np.float64 or len(stamps.shape) != 1:
        raise DatasetError(
            f"{TIMESTAMP} must be float64 of shape [N], got {stamps.dtype} {list(stamps.shape)}"
        )
    rows = stamps.shape[0]
    if rows < 1:
        raise DatasetError("holds no samples")
    if rows > max_samples:
        raise DatasetError(
            f"holds {rows} samples, more than the capture's max_samples {max_samples}"
        )
    for key, spec in specs.items():
        info = arrays[key]
        if info.dtype != np.dtype(spec.dtype):
            raise DatasetError(f"{key} is {info.dtype}, {bundle} takes {spec.dtype}")
        fits = len(info.shape) == len(spec.shape) and all(
            want is None or got == want
            for got, want in zip(info.shape[1:], spec.shape[1:], strict=True)
        )
        if not fits:
            raise DatasetError(
                f"{key} has shape {list(info.shape)}, {bundle} takes {_shape(spec)} "
                "(rows along the first axis)"
            )
        if info.shape[0] != rows:
            raise DatasetError(f"{key} has {info.shape[0]} rows, {TIMESTAMP} has {rows}")
    return rows


@dataclass(frozen=True)
class Upload:
    """One device's accepted upload, as the export reads it."""

    path: Path
    arrays: dict[str, ArrayInfo]
    rows: int
    device_id: str
    bundle_sha256: str
    model_name: str
    model_version: str


def export_columns(uploads: Sequence[Upload]) -> dict[str, Column]:
    """Columns of the merged dataset (parts load one upload's array at a time).

    Raises:
        DatasetError: two uploads whose arrays cannot be stacked (another model).
    """
    if not uploads:
        raise DatasetError("there are no uploads to export")
    first = uploads[0]
    keys = sorted(k for k in first.arrays if k != BUNDLE)
    for upload in uploads[1:]:
        for key in keys:
            a, b = first.arrays[key], upload.arrays.get(key)
            if b is None or a.dtype != b.dtype or a.shape[1:] != b.shape[1:]:
                got = "nothing" if b is None else f"{b.dtype} {list(b.shape[1:])}"
                raise DatasetError(
                    f"{key} rows are {a.dtype} {list(a.shape[1:])} from {first.device_id} "
                    f"({first.model_name}@{first.model_version}) but {got} from "
                    f"{upload.device_id} ({upload.model_name}@{upload.model_version}): "
                    "export one bundle at a time (?bundle=SHA)"
                )
    total = sum(u.rows for u in uploads)

    def parts(key: str) -> Iterator[npt.NDArray[Any]]:
        for upload in uploads:
            yield load_array(upload.path, key)

    columns = {
        key: Column(first.arrays[key].dtype, (total, *first.arrays[key].shape[1:]), parts(key))
        for key in keys
    }
    for label in ROW_LABELS:
        values = [str(getattr(u, label)) for u in uploads]
        dtype = np.dtype(f"<U{max(1, *(len(v) for v in values))}")
        columns[label] = Column(dtype, (total,), _repeat(uploads, values, dtype))
    return columns


def _repeat(
    uploads: Sequence[Upload], values: list[str], dtype: np.dtype[Any]
) -> Iterator[npt.NDArray[Any]]:
    for upload, value in zip(uploads, values, strict=True):
        yield np.full(upload.rows, value, dtype=dtype)
