"""The on-disk form of a bundle: ``manifest.dsse.json`` + ``blobs/<sha256>``.

Writes are atomic per file (temp, fsync, rename). The reader opens only the blobs the
verified manifest names, by digest, so nothing in the directory can point elsewhere.

A blob is held in one of two forms: as stored (``blobs/<sha256>``, what the builder
writes and the controller serves; zstd-compressed for an encoded entry) or installed
(``blobs/<decoded_sha256>``, what an agent's slot holds). The reader accepts either and
verifies what it finds; only installed files can be loaded (:meth:`VerifiedBundle.path_of`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware_bundles.blob_encoding import check_encoded
from firmware_bundles.builder import BuiltBundle
from firmware_bundles.errors import MissingFileError
from firmware_bundles.manifest import FileEntry, Manifest
from firmware_bundles.verify import BlobVerifier, sha256_hex, verify_manifest

ENVELOPE_NAME = "manifest.dsse.json"
BLOBS_DIR = "blobs"
CHUNK = 1 << 16


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so a crash leaves the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bundle_dir(bundle: BuiltBundle, out: Path) -> Path:
    """Write ``bundle`` under ``out``; return the envelope path."""
    for digest, data in bundle.blobs.items():
        atomic_write(out / BLOBS_DIR / digest, data)
    envelope_path = out / ENVELOPE_NAME
    atomic_write(envelope_path, bundle.envelope)
    return envelope_path


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    envelope: bytes
    blob_paths: dict[str, Path]  # file name -> path
    # Names of the files held only in their encoded (stored) form.
    encoded: frozenset[str] = frozenset()

    def path_of(self, role: str) -> Path:
        """The installed file with ``role``, ready to load."""
        name = self.manifest.file(role).name
        if name in self.encoded:
            raise MissingFileError(f"bundle file {name!r} is held zstd-encoded, not installed")
        return self.blob_paths[name]

    @property
    def manifest_sha256(self) -> str:
        return sha256_hex(self.envelope)


def verify_bundle_dir(
    directory: Path,
    trusted: Mapping[str, Ed25519PublicKey],
    now: datetime,
    *,
    allow_expired: bool = False,
) -> VerifiedBundle:
    """Verify signature, manifest and every blob's size and digest in ``directory``.

    Raises:
        BundleError: the first problem found, naming the file and what was wrong.
    """
    envelope_path = directory / ENVELOPE_NAME
    try:
        envelope = envelope_path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"{directory} has no {ENVELOPE_NAME}") from None
    manifest = verify_manifest(envelope, trusted, now, allow_expired=allow_expired)
    paths: dict[str, Path] = {}
    encoded: set[str] = set()
    for entry in manifest.files:
        installed = directory / BLOBS_DIR / entry.content_sha256
        stored = directory / BLOBS_DIR / entry.sha256
        if _regular(installed):
            _check_file(installed, entry.decoded_entry())
            paths[entry.name] = installed
        elif entry.encoded and _regular(stored):
            _check_file(stored, entry)
            check_encoded(stored, entry)
            paths[entry.name] = stored
            encoded.add(entry.name)
        else:
            raise MissingFileError(
                f"bundle file {entry.name!r} (blob {entry.content_sha256[:12]}) is missing"
            )
    return VerifiedBundle(manifest, envelope, paths, frozenset(encoded))


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _check_file(path: Path, entry: FileEntry) -> None:
    checker = BlobVerifier(entry)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            checker.update(chunk)
    checker.finish()
