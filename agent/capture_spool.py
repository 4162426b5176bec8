"""A device's capture spool under ``{data_dir}/captures``: what it sampled, crash-safe.

::

    captures/<capture_id>/
        capture.json                 the request and where this device is with it
        00000001-20.npz              samples (here 20 rows), one chunk per write
        upload.npz                   the one file uploaded, built from the chunks

Every file is written whole (temp file, fsync, rename, fsync of the directory), so a
power cut leaves a chunk complete or absent: the rows on disk, read off the chunk
names, are exactly what was captured, and a restart resumes counting from them.
``capture.json`` says where the capture stands; a capture that is finished (uploaded,
empty, canceled, failed) keeps it, with no samples, as a record that stops the
retained command, redelivered at every reconnect, from starting it again.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bundles.bundle_dir import atomic_write
from firmware_bundles.capture_wire import CaptureRequest, check_capture_id
from firmware_bundles.errors import DatasetError, WireError
from firmware_bundles.npz_dataset import Column, load_array, write_npz

log = logging.getLogger(__name__)

META = "capture.json"
UPLOAD = "upload.npz"
TIMESTAMP = "timestamp"
BUNDLE_KEY = "bundle_sha256"
_CHUNK_RE = re.compile(r"^(\d{8})-(\d+)\.npz$")

# Where a capture stands on this device.
CAPTURING = "capturing"
READY = "ready"  # upload.npz built, not yet accepted by the controller
UPLOADED = "uploaded"
EMPTY = "empty"
CANCELED = "canceled"
FAILED = "failed"
FINISHED = (UPLOADED, EMPTY, CANCELED, FAILED)

# Column name -> (dtype string, shape of one row): what every sample must match.
Signature = dict[str, tuple[str, tuple[int, ...]]]


@dataclass
class Spooled:
    """One capture as the spool holds it."""

    request: CaptureRequest
    state: str = CAPTURING
    bundle_sha256: str | None = None  # the bundle sampled (bound at the first sample)
    signature: Signature | None = None
    message: str = ""
    rows: int = 0  # rows in the chunks on disk
    bytes: int = 0  # bytes of the chunks on disk
    chunks: list[Path] = field(default_factory=list)

    @property
    def capture_id(self) -> str:
        return self.request.capture_id

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class CaptureSpool:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, capture_id: str) -> Path:
        return self.root / check_capture_id(capture_id)

    def upload_path(self, capture_id: str) -> Path:
        return self._dir(capture_id) / UPLOAD

    # ------------------------------------------------------------------ reading

    def load(self) -> list[Spooled]:
        """Every capture on disk; one whose record cannot be read is set aside, logged."""
        found: list[Spooled] = []
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for stale in directory.glob(".*.tmp"):
                stale.unlink(missing_ok=True)  # a write cut short by a power loss
            try:
                found.append(self._load_one(directory))
            except (OSError, ValueError, KeyError, TypeError, WireError) as exc:
                log.error("capture spool %s is unreadable (%s); removing it", directory, exc)
                shutil.rmtree(directory, ignore_errors=True)
        return found

    def _load_one(self, directory: Path) -> Spooled:
        data = json.loads((directory / META).read_text())
        request = CaptureRequest(**data["request"])
        check_capture_id(request.capture_id)
        if request.capture_id != directory.name:
            raise ValueError(f"holds capture {request.capture_id}")
        signature = data.get("signature")
        spooled = Spooled(
            request=request,
            state=data["state"],
            bundle_sha256=data.get("bundle_sha256"),
            signature=None
            if signature is None
            else {k: (v[0], tuple(v[1])) for k, v in signature.items()},
            message=data.get("message", ""),
            rows=int(data.get("rows", 0)),
        )
        if spooled.finished:
            return spooled
        chunks = {p: _CHUNK_RE.match(p.name) for p in sorted(directory.iterdir())}
        spooled.chunks = [p for p, match in chunks.items() if match]
        if spooled.state == CAPTURING:
            # The chunks, not the record, say what was captured: each is whole or absent.
            spooled.rows = sum(int(m.group(2)) for m in chunks.values() if m)
            spooled.bytes = sum(p.stat().st_size for p in spooled.chunks)
        else:
            upload = directory / UPLOAD
            spooled.bytes = upload.stat().st_size if upload.exists() else 0
        return spooled

    # ------------------------------------------------------------------ writing

    def save(self, spooled: Spooled) -> None:
        """Write the capture's record (request, state, bundle, signature)."""
        data: dict[str, Any] = {
            "request": asdict(spooled.request),
            "state": spooled.state,
            "bundle_sha256": spooled.bundle_sha256,
            "signature": None
            if spooled.signature is None
            else {k: [d, list(s)] for k, (d, s) in spooled.signature.items()},
            "message": spooled.message,
            "rows": spooled.rows,
        }
        self._write(self._dir(spooled.capture_id) / META, json.dumps(data).encode())

    def create(self, request: CaptureRequest) -> Spooled:
        spooled = Spooled(request, bundle_sha256=request.bundle_sha256)
        self.save(spooled)
        return spooled

    def append(
        self, spooled: Spooled, samples: Sequence[Mapping[str, npt.NDArray[Any]]], rows: int
    ) -> None:
        """Write ``samples`` (column -> rows, each with the spooled signature) as one chunk."""
        assert spooled.signature is not None, "a capture's signature is set by its first sample"
        seq = 1 + max((int(p.name[:8]) for p in spooled.chunks), default=0)
        path = self._dir(spooled.capture_id) / f"{seq:08d}-{rows}.npz"
        columns = {
            key: Column(np.dtype(dtype), (rows, *shape), [s[key] for s in samples])
            for key, (dtype, shape) in spooled.signature.items()
        }
        size = write_npz(path, columns, fsync=self.fsync)
        spooled.chunks.append(path)
        spooled.rows += rows
        spooled.bytes += size

    def build_upload(self, spooled: Spooled) -> Path:
        """Merge the chunks into ``upload.npz`` (plus the bundle sampled); return its path.

        Rebuilding after a crash writes the same rows again: the file is replaced whole.
        """
        assert spooled.signature is not None and spooled.bundle_sha256 is not None
        chunks = list(spooled.chunks)

        def parts(key: str) -> Any:
            return (load_array(chunk, key) for chunk in chunks)

        columns = {
            key: Column(np.dtype(dtype), (spooled.rows, *shape), parts(key))
            for key, (dtype, shape) in spooled.signature.items()
        }
        columns[BUNDLE_KEY] = Column(np.dtype("<U64"), (), [np.array(spooled.bundle_sha256)])
        path = self.upload_path(spooled.capture_id)
        try:
            write_npz(path, columns, fsync=self.fsync)
        except DatasetError as exc:  # chunks that disagree: written by another version?
            raise OSError(f"capture {spooled.capture_id}: chunks do not merge: {exc}") from exc
        return path

    def drop_samples(self, spooled: Spooled) -> None:
        """Delete the chunks and the upload file (after the state saying why is written)."""
        for path in [*spooled.chunks, self.upload_path(spooled.capture_id)]:
            path.unlink(missing_ok=True)
        spooled.chunks.clear()

    def remove(self, capture_id: str) -> None:
        shutil.rmtree(self._dir(capture_id), ignore_errors=True)

    def _write(self, path: Path, data: bytes) -> None:
        if self.fsync:
            atomic_write(path, data)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(path)
