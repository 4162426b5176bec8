"""``.npz`` files read without trust (only headers, before any data) and written by streaming."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib import format as npy_format

from firmware_bundles.errors import DatasetError
from firmware_bundles.npz_dataset import ArrayInfo, Column, inspect_npz, write_npz


def forged(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def npy(header_shape: tuple[int, ...], data: bytes, dtype: str = "<f4") -> bytes:
    out = io.BytesIO()
    npy_format.write_array_header_1_0(
        out, {"descr": dtype, "fortran_order": False, "shape": header_shape}
    )
    return out.getvalue() + data


def test_headers_are_read_without_loading(tmp_path: Path) -> None:
    path = tmp_path / "ok.npz"
    arrays: dict[str, Any] = {"input/x": np.zeros((3, 8), np.float32), "b": np.array("ab")}
    np.savez(path, **arrays)
    assert inspect_npz(path) == {
        "input/x": ArrayInfo(np.dtype("float32"), (3, 8)),
        "b": ArrayInfo(np.dtype("<U2"), ()),
    }


@pytest.mark.parametrize(
    ("members", "message"),
    [
        # A header claiming a terabyte over 8 bytes of data: numpy would allocate first.
        ({"x.npy": npy((1 << 38,), b"\0" * 8)}, "declares 1099511627776 bytes of data but holds 8"),
        ({"x.npy": npy((2,), b"\0" * 12)}, "declares 8 bytes of data but holds 12"),
        ({"notes.txt": b"hello"}, "member 'notes.txt' is not an .npy array"),
        ({"x.npy": b"\x93NUMPY\x01\x00\x0c\x00{not a dict}"}, "has no valid .npy header"),
        ({"x.npy": b"\x93NUMPY garbage"}, "is .npy version (32, 103), not 1.0 or 2.0"),
        ({"x.npy": npy((2,), b"\0" * 16, dtype="|O")}, "holds Python objects (pickle)"),
    ],
)
def test_forged_files_are_refused_by_their_headers(
    tmp_path: Path, members: dict[str, bytes], message: str
) -> None:
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        inspect_npz(forged(tmp_path / "f.npz", members))


def test_fortran_order_too_many_members_and_not_a_zip(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", x=np.asfortranarray(np.zeros((2, 3))))
    with pytest.raises(DatasetError, match="Fortran order"):
        inspect_npz(tmp_path / "f.npz")
    many: dict[str, Any] = {f"a{i}": np.zeros(1) for i in range(4)}
    np.savez(tmp_path / "many.npz", **many)
    with pytest.raises(DatasetError, match="holds 4 arrays, more than 3"):
        inspect_npz(tmp_path / "many.npz", max_members=3)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DatasetError, match="not an .npz file"):
        inspect_npz(tmp_path / "junk.npz")


def test_parts_are_streamed_into_exactly_the_declared_shape(tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    parts = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((1, 3), np.float32)]
    labels = [np.array(["a", "a"]), np.array(["ccc"])]  # widened to the column's <U3
    write_npz(
        out,
        {
            "x": Column(np.dtype(np.float32), (3, 3), iter(parts)),
            "who": Column(np.dtype("<U3"), (3,), iter(labels)),
            "sha": Column(np.dtype("<U4"), (), [np.array("abcd")]),
        },
    )
    with np.load(out, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["x"], np.concatenate(parts))
        assert list(data["who"]) == ["a", "a", "ccc"] and str(data["sha"]) == "abcd"


@pytest.mark.parametrize(
    ("shape", "parts", "message"),
    [
        ((4, 3), [np.zeros((3, 3), np.float32)], "the parts hold 36 bytes, the shape needs 48"),
        ((2, 3), [np.zeros((3, 3), np.float32)], "the parts hold 36 bytes, the shape needs 24"),
        ((2, 3), [np.zeros((2, 4), np.float32)], "a part has shape"),
        ((2, 3), [np.zeros((2, 3), np.float64)], "a part is float64"),
    ],
)
def test_parts_that_do_not_fit_leave_no_file(
    tmp_path: Path, shape: tuple[int, ...], parts: list[np.ndarray], message: str
) -> None:
    out = tmp_path / "out.npz"
    with pytest.raises(DatasetError, match=message):
        write_npz(out, {"x": Column(np.dtype(np.float32), shape, iter(parts))})
    assert list(tmp_path.iterdir()) == []
