"""Content-addressed blob store on the filesystem: ``{root}/sha256/<hex>``.

A blob is written to a temp file in ``{root}/tmp`` while its sha256 is computed, then
fsync'd and renamed into place, so a reader never sees a torn blob and a crash leaves
at most a stale temp file (removed at the next start). Big uploads stream through;
nothing holds a whole model in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from controller.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from firmware_bundles.bundle_dir import atomic_write, fsync_dir
from firmware_bundles.manifest import FileEntry
from firmware_bundles.verify import BlobVerifier

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20
STALE_TEMP_S = 3600.0


def check_sha256(value: str) -> str:
    if not SHA256_RE.match(value):
        raise InvalidRequestError(f"{value[:80]!r} is not a sha256 hex digest (64 of 0-9a-f)")
    return value


class BlobStore:
    """Blobs addressed by the sha256 of their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "sha256"
        self._tmp = root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TEMP_S
        for path in self._tmp.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass  # another replica removed it first

    def path(self, sha256: str) -> Path:
        """Where blob ``sha256`` lives (whether or not it exists)."""
        return self._blobs / check_sha256(sha256)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def existing_path(self, sha256: str) -> Path:
        path = self.path(sha256)
        if not path.is_file():
            raise NotFoundError(f"no blob {sha256}")
        return path

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its sha256. Storing a blob twice is a no-op."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._blobs / digest
        if not path.exists():
            atomic_write(path, data)
        return digest

    def stage(self, *, max_bytes: int, expected: FileEntry | None = None) -> StagedBlob:
        """Open a temp file to stream a blob into; :meth:`StagedBlob.commit` stores it."""
        return StagedBlob(self, max_bytes=max_bytes, expected=expected)

    def _new_temp(self) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="upload-", suffix=".tmp")
        return fd, Path(name)


class StagedBlob:
    """A blob being written: hashed (and checked against ``expected``) as it streams."""

    def __init__(self, store: BlobStore, *, max_bytes: int, expected: FileEntry | None) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._verifier = BlobVerifier(expected) if expected is not None else None
        self._hash = hashlib.sha256()
        self.size = 0
        fd, self.path = store._new_temp()
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._committed = False

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raise if the blob outgrows the limit or its manifest entry."""
        assert self._file is not None, "staged blob already closed"
        self.size += len(chunk)
        if self.size > self._max_bytes:
            raise PayloadTooLargeError(
                f"upload is over the EDGEFLEET_MAX_UPLOAD_BYTES limit of {self._max_bytes} bytes"
            )
        if self._verifier is not None:
            self._verifier.update(chunk)
        self._hash.update(chunk)
        self._file.write(chunk)

    def copy_from(self, source: BinaryIO) -> StagedBlob:
        while chunk := source.read(CHUNK):
            self.write(chunk)
        return self

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> str:
        """Flush and close; check size and digest against ``expected``; return the sha256."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if self._verifier is not None:
            self._verifier.finish()
        return self.sha256

    def commit(self) -> str:
        """Move the blob into the store under its sha256; return the sha256."""
        digest = self.finish()
        target = self._store._blobs / digest
        if target.exists():
            self.path.unlink(missing_ok=True)  # same bytes stored already
        else:
            os.replace(self.path, target)
            fsync_dir(target.parent)
        self._committed = True
        return digest

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._committed:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StagedBlob:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()
