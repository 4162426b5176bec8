"""``.npz`` datasets read without trust and written without holding them in memory.

Shared by the agent (it merges its capture spool into one upload) and the controller
(it checks uploads and merges them into one export). Two rules keep an upload from
costing more than its size:

- :func:`inspect_npz` reads only the zip directory and each array's ``.npy`` header.
  Members must be stored uncompressed (``np.savez``, never ``savez_compressed``), so
  no member expands past the bytes received, and each header must describe exactly
  the bytes that follow; object arrays (which only pickle can load) are refused.
- :func:`write_npz` streams each array part by part into its member, so merging many
  files needs the memory of one part, not of the result. The output is written to a
  temp file and renamed into place: a reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib import format as npy_format

from firmware_bundles.bundle_dir import fsync_dir
from firmware_bundles.errors import DatasetError
from firmware_bundles.npy_lock import NPY_LOAD_LOCK

MAX_MEMBERS = 256


@dataclass(frozen=True)
class ArrayInfo:
    """An array's dtype and shape, as its ``.npy`` header declares them."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def inspect_npz(path: Path, *, max_members: int = MAX_MEMBERS) -> dict[str, ArrayInfo]:
    """Name -> dtype and shape of every array in ``path``, loading no data.

    Raises:
        DatasetError: not an uncompressed ``.npz`` of plain arrays, naming the problem.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"not an .npz file (a zip of .npy arrays): {exc}") from None
    arrays: dict[str, ArrayInfo] = {}
    with archive:
        members = archive.infolist()
        if len(members) > max_members:
            raise DatasetError(f"holds {len(members)} arrays, more than {max_members}")
        for member in members:
            arrays.update([_inspect_member(archive, member)])
        if len(arrays) != len(members):
            raise DatasetError("names an array twice")
    return arrays


def _inspect_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> tuple[str, ArrayInfo]:
    name = member.filename
    if not name.endswith(".npy") or member.is_dir():
        raise DatasetError(f"member {name[:80]!r} is not an .npy array")
    key = name[: -len(".npy")]
    if member.compress_type != zipfile.ZIP_STORED or member.compress_size != member.file_size:
        raise DatasetError(f"array {key[:80]!r} is compressed: write the file with np.savez")
    try:
        with archive.open(member) as handle:
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
            else:
                raise DatasetError(f"array {key[:80]!r} is .npy version {version}, not 1.0 or 2.0")
            header_end = handle.tell()
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"array {key[:80]!r} has no valid .npy header: {exc}") from None
    if dtype.hasobject:
        raise DatasetError(f"array {key[:80]!r} holds Python objects (pickle): refused")
    if fortran and len(shape) > 1:
        raise DatasetError(f"array {key[:80]!r} is in Fortran order: write C-ordered arrays")
    info = ArrayInfo(dtype, tuple(int(d) for d in shape))
    if header_end + info.nbytes != member.file_size:
        raise DatasetError(
            f"array {key[:80]!r} declares {info.nbytes} bytes of data but holds "
            f"{member.file_size - header_end}"
        )
    return key, info


def load_array(path: Path, key: str) -> npt.NDArray[Any]:
    """One array of an inspected ``.npz`` (never unpickles)."""
    with NPY_LOAD_LOCK, np.load(path, allow_pickle=False) as data:
        array: npt.NDArray[Any] = data[key]
    return array


@dataclass(frozen=True)
class Column:
    """An output array: its dtype, its full shape, and the parts that fill it in order
    (concatenated along axis 0; a 0-d array has a single 0-d part)."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    parts: Iterable[npt.NDArray[Any]]


def write_npz(path: Path, columns: Mapping[str, Column], *, fsync: bool = True) -> int:
    """Write ``columns`` to ``path`` as an uncompressed ``.npz``; return its size.

    Raises:
        DatasetError: a part's dtype or trailing shape differs from its column's, or the
            parts do not fill the declared shape exactly (nothing is left at ``path``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for key, column in columns.items():
                    _write_column(archive, key, column)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path.stat().st_size


def _write_column(archive: zipfile.ZipFile, key: str, column: Column) -> None:
    expected = ArrayInfo(column.dtype, column.shape).nbytes
    header = {
        "descr": npy_format.dtype_to_descr(column.dtype),
        "fortran_order": False,
        "shape": column.shape,
    }
    written = 0
    with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
        npy_format.write_array_header_1_0(member, header)
        for part in column.parts:
            if part.dtype != column.dtype and part.dtype.kind == column.dtype.kind == "U":
                part = part.astype(column.dtype)  # a shorter string widens, exactly
            if part.dtype != column.dtype:
                raise DatasetError(f"{key!r}: a part is {part.dtype}, the column {column.dtype}")
            if part.shape[1:] != column.shape[1:] or (part.ndim == 0) != (len(column.shape) == 0):
                raise DatasetError(
                    f"{key!r}: a part has shape {list(part.shape)}, "
                    f"the column's rows are {list(column.shape[1:])}"
                )
            data = np.ascontiguousarray(part).reshape(-1)
            written += data.nbytes
            if written > expected:
                break
            member.write(data.view(np.uint8).data)
    if written != expected:
        raise DatasetError(f"{key!r}: the parts hold {written} bytes, the shape needs {expected}")
