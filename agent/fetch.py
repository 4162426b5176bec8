"""Fetching blobs over HTTP by sha256, resuming with Range, verifying while streaming.

A partial download is kept as ``<sha256>.part``; the next attempt re-hashes what is
there and asks only for the rest (``Range: bytes=N-``). Bytes past the size the
manifest declares are refused as they arrive, so a hostile server cannot fill the disk.

An encoded (zstd) blob is downloaded and verified as stored first, then decoded with a
hard bound on its output into ``<decoded_sha256>`` (:func:`fetch_file`): nothing is
decompressed before its bytes are proven to be the signed ones.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, cast

from agent.errors import UpdateError
from firmware_bundles.blob_encoding import decode_file
from firmware_bundles.errors import DigestMismatchError, SizeMismatchError
from firmware_bundles.manifest import FileEntry
from firmware_bundles.verify import BlobVerifier

CHUNK = 1 << 16
# Largest file (stored or decoded) an agent accepts, whatever a signed manifest declares.
DEFAULT_MAX_BLOB_BYTES = 4 << 30


class BlobResponse(Protocol):
    """What the downloader reads a blob from: an ``http.client.HTTPResponse``, or a
    stand-in with the same three members (the simulator's slow link wraps the real one)."""

    @property
    def status(self) -> int: ...

    def read(self, amt: int, /) -> bytes: ...

    def close(self) -> None: ...


# The transport seam: open ``request`` with a per-operation socket ``timeout``.
Opener = Callable[[urllib.request.Request, float], BlobResponse]


def open_url(request: urllib.request.Request, timeout: float) -> BlobResponse:
    """The production opener: ``urllib.request.urlopen``."""
    return cast(BlobResponse, urllib.request.urlopen(request, timeout=timeout))


def fetch_small(url: str, *, max_bytes: int, timeout: float) -> bytes:
    """GET a small document (the envelope) with a hard size cap."""
    request = urllib.request.Request(url, headers={"User-Agent": "edgefleet-agent"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            data: bytes = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise UpdateError("download", f"GET {url} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise UpdateError("download", f"GET {url} failed: {exc}") from exc
    if len(data) > max_bytes:
        raise UpdateError("download", f"{url} is larger than the {max_bytes}-byte limit")
    # A server that dies mid-response leaves a short body and no error from read(n): a
    # download to retry, not a bundle that fails its digest.
    if declared is not None and declared.isdigit() and len(data) < int(declared):
        raise UpdateError(
            "download", f"GET {url} ended after {len(data)} of {declared} bytes (cut off)"
        )
    return data


def _rehash_partial(part: Path, entry: FileEntry) -> BlobVerifier:
    checker = BlobVerifier(entry)
    if part.exists():
        if part.stat().st_size > entry.size:
            part.unlink()
            return checker
        with part.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                checker.update(chunk)
    return checker


def download_blob(
    base_url: str,
    entry: FileEntry,
    downloads: Path,
    *,
    timeout: float,
    opener: Opener = open_url,
) -> Path:
    """Download one blob into ``downloads`` and return the verified file's path.

    Raises:
        UpdateError: network or HTTP failure (code ``download``; the partial file stays
            for the next attempt to resume).
        DigestMismatchError / SizeMismatchError: the bytes do not match the manifest
            (the partial file is deleted: resuming would only repeat the failure).
    """
    done = downloads / entry.sha256
    if done.exists():
        return done
    part = downloads / f"{entry.sha256}.part"
    checker = _rehash_partial(part, entry)
    offset = checker.received
    try:
        if offset < entry.size:
            checker = _stream_into(f"{base_url}/{entry.sha256}", part, checker, timeout, opener)
        if checker.received < entry.size:
            # A short read is a network problem, not a bad blob: keep the part to resume.
            raise UpdateError(
                "download", f"{entry.name}: got {checker.received} of {entry.size} bytes"
            )
        checker.finish()
    except DigestMismatchError:
        part.unlink(missing_ok=True)
        raise
    except SizeMismatchError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, done)
    return done


def check_file_limit(entry: FileEntry, max_bytes: int) -> None:
    """Refuse a file whose declared stored or decoded length is over ``max_bytes``.

    A signed manifest is trusted about *which* bytes to install, not about how much disk
    this device can give them.
    """
    largest = max(entry.size, entry.content_size)
    if largest > max_bytes:
        raise UpdateError(
            "too_large",
            f"{entry.name}: the manifest declares {largest} bytes, over this device's "
            f"{max_bytes}-byte limit for one file",
        )


def fetch_file(
    base_url: str,
    entry: FileEntry,
    downloads: Path,
    *,
    timeout: float,
    opener: Opener = open_url,
) -> Path:
    """Download ``entry`` and return the path of the file to install (decoded if encoded).

    Raises:
        UpdateError: as :func:`download_blob`.
        BundleError: the bytes, or the decoded bytes, do not match the manifest (the
            stored blob and any partial output are deleted).
    """
    if not entry.encoded:
        return download_blob(base_url, entry, downloads, timeout=timeout, opener=opener)
    installed = downloads / entry.content_sha256
    if installed.exists():
        return installed
    stored = download_blob(base_url, entry, downloads, timeout=timeout, opener=opener)
    try:
        decode_file(stored, entry, installed)
    finally:
        # Decoded, or it never will: the same signed bytes would fail the same way.
        stored.unlink(missing_ok=True)
    return installed


def _stream_into(
    url: str, part: Path, checker: BlobVerifier, timeout: float, opener: Opener
) -> BlobVerifier:
    offset = checker.received
    headers = {"User-Agent": "edgefleet-agent"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener(request, timeout)
        try:
            if offset and response.status != 206:
                # Server ignored the Range: start over rather than append a second copy.
                checker = BlobVerifier(checker.entry)
                mode = "wb"
            else:
                mode = "ab" if offset else "wb"
            with part.open(mode) as handle:
                while chunk := response.read(CHUNK):
                    checker.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            response.close()
        return checker
    except urllib.error.HTTPError as exc:
        raise UpdateError("download", f"GET {url} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise UpdateError(
            "download", f"GET {url} failed after {checker.received} bytes: {exc}"
        ) from exc
