"""Blobs stored zstd-compressed: encoding on the build side, bounded decoding on the device.

A file entry with ``encoding: "zstd"`` names two digests (see
:class:`~firmware_bundles.manifest.FileEntry`): ``sha256``/``size`` of the stored bytes,
which is what travels and what the blob is addressed by, and ``decoded_sha256``/
``decoded_size`` of the file the device installs. As in TUF (signed length and hashes of
the target as downloaded) and Mender (the signed manifest names the checksum of each
compressed payload archive, whose header lists the payload files' checksums), the stored
bytes are proven to be the signed ones before anything is decompressed.

Decoding then streams the verified stored bytes through zstd and stops as soon as the
output passes ``decoded_size`` (a decompression bomb costs at most one chunk over the
declared size), hashes the output while writing it to a temp file, and renames the temp
file into place only when size and digest match: a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import zstandard

from firmware_bundles.errors import SizeMismatchError
from firmware_bundles.manifest import ZSTD, FileEntry
from firmware_bundles.verify import BlobVerifier, sha256_hex

# Level 10: on float weights the level hardly changes the size (*measured*, 6.8 MB CNN:
# levels 3/10/19 within 0.05%), while 19 takes ~50x longer; zeros from pruning compress
# at any level. compress reports download sizes with this same level.
ZSTD_LEVEL = 10
# Encoding a blob below this size saves a few bytes and costs the device a decode.
MIN_ENCODE_BYTES = 64 * 1024
# Keep the encoded form only when it saves at least this fraction of the download.
MIN_SAVING = 0.02
CHUNK = 1 << 16


class DecodeError(SizeMismatchError):
    """The stored bytes are not a valid zstd stream, or decode to the wrong length."""


def zstd_compress(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    """``data`` as one zstd frame at ``level``."""
    return zstandard.ZstdCompressor(level=level).compress(data)


def encode_entry(
    name: str,
    role: str,
    data: bytes,
    *,
    encoding: str | None,
    min_bytes: int = MIN_ENCODE_BYTES,
    min_saving: float = MIN_SAVING,
) -> tuple[FileEntry, bytes]:
    """The manifest entry for ``data`` and the bytes to store for it.

    With ``encoding="zstd"`` the file is stored compressed when it is at least
    ``min_bytes`` long and compression saves at least ``min_saving`` of it; otherwise
    (and with ``encoding=None``) it is stored as is, with a plain entry that agents
    without decoding understand.
    """
    digest, size = sha256_hex(data), len(data)
    if encoding == ZSTD and size >= min_bytes:
        stored = zstd_compress(data)
        if len(stored) <= size * (1.0 - min_saving):
            entry = FileEntry(
                name=name,
                role=role,
                sha256=sha256_hex(stored),
                size=len(stored),
                encoding=ZSTD,
                decoded_sha256=digest,
                decoded_size=size,
            )
            return entry, stored
    elif encoding not in (None, ZSTD):
        raise ValueError(f"unknown blob encoding {encoding!r}; known: {ZSTD!r} or None")
    return FileEntry(name=name, role=role, sha256=digest, size=size), data


def decode_stream(
    source: Path, entry: FileEntry, sink: BlobVerifier, out: BinaryIO | None = None
) -> None:
    """Decode ``source`` (verified stored bytes) into ``sink``, bounded by ``sink``'s size.

    ``out``, when given, is a binary file the decoded bytes are also written to.

    Raises:
        DecodeError: not a zstd stream, or it ends before ``decoded_size`` bytes.
        SizeMismatchError: it decodes to more than ``decoded_size`` bytes (a bomb).
        DigestMismatchError: the decoded bytes have another sha256.
    """
    declared = sink.entry.size
    with source.open("rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK)
        try:
            while chunk := reader.read(CHUNK):
                try:
                    sink.update(chunk)
                except SizeMismatchError:
                    raise SizeMismatchError(
                        f"file {entry.name!r} decodes to more than the {declared} bytes the "
                        f"manifest declares (stopped after {sink.received}): refusing it"
                    ) from None
                if out is not None:
                    out.write(chunk)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"file {entry.name!r} is not a valid zstd stream: {exc}") from exc
    if sink.received < declared:
        raise DecodeError(
            f"file {entry.name!r}: the zstd stream ended after {sink.received} of the "
            f"{declared} decoded bytes the manifest declares (truncated or corrupt)"
        )
    sink.finish()


def decode_file(source: Path, entry: FileEntry, target: Path) -> Path:
    """Decode the verified stored blob ``source`` of ``entry`` into ``target`` atomically.

    Returns ``target``. On any error nothing is left at ``target`` (nor a temp file).
    """
    if not entry.encoded:
        raise ValueError(f"file {entry.name!r} is not encoded")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".decode")
    try:
        with os.fdopen(fd, "wb") as handle:
            decode_stream(source, entry, BlobVerifier(entry.decoded_entry()), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def check_encoded(source: Path, entry: FileEntry) -> None:
    """Verify that stored blob ``source`` decodes to ``entry``'s decoded size and digest."""
    decode_stream(source, entry, BlobVerifier(entry.decoded_entry()))
