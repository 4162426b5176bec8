"""The blob store keeps only whole, verified blobs under their sha256."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from controller.blobstore import BlobStore
from controller.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from firmware_bundles.errors import DigestMismatchError, SizeMismatchError
from firmware_bundles.manifest import FileEntry


def entry(data: bytes, name: str = "model.onnx") -> FileEntry:
    return FileEntry(name, "model", hashlib.sha256(data).hexdigest(), len(data))


def leftovers(store: BlobStore) -> list[Path]:
    return list((store.root / "tmp").iterdir())


def test_streamed_blobs_land_under_their_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"weights" * 1000
    with store.stage(max_bytes=1 << 20, expected=entry(data)) as staged:
        staged.copy_from(io.BytesIO(data))
        digest = staged.commit()
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.existing_path(digest).read_bytes() == data
    assert store.put_bytes(data) == digest  # storing again is a no-op
    assert leftovers(store) == []


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"weightz", DigestMismatchError),
        (b"weight", SizeMismatchError),
        (b"weights!", SizeMismatchError),
    ],
)
def test_a_blob_that_differs_from_its_entry_is_never_stored(
    tmp_path: Path, sent: bytes, error: type[Exception]
) -> None:
    store = BlobStore(tmp_path)
    expected = entry(b"weights")
    with pytest.raises(error, match="'model.onnx'"):
        with store.stage(max_bytes=1 << 20, expected=expected) as staged:
            staged.copy_from(io.BytesIO(sent))
            staged.commit()
    assert not store.exists(expected.sha256)
    assert leftovers(store) == []


def test_limits_and_bad_addresses(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(PayloadTooLargeError, match="EDGEFLEET_MAX_UPLOAD_BYTES"):
        with store.stage(max_bytes=10) as staged:
            staged.copy_from(io.BytesIO(b"x" * 11))
    assert leftovers(store) == []
    with pytest.raises(InvalidRequestError, match="not a sha256"):
        store.path("../../etc/passwd")
    with pytest.raises(NotFoundError):
        store.existing_path("0" * 64)
