"""Verification of manifests and blobs: pure, takes bytes and ``now``.

This is the trusted core both the agent and the controller run before believing a
bundle (python-tuf's ``TrustedMetadataSet`` is the model). Order matters: the envelope
signature is checked over the exact bytes first, and only then is the payload parsed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware_bundles.dsse import verify_envelope
from firmware_bundles.errors import (
    DigestMismatchError,
    ExpiredBundleError,
    RollbackError,
    SizeMismatchError,
)
from firmware_bundles.manifest import PAYLOAD_TYPE, FileEntry, Manifest, parse_manifest


def verify_manifest(
    envelope: bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    now: datetime,
    *,
    min_release_counter: int = 0,
    allow_expired: bool = False,
) -> Manifest:
    """Check signature, schema, expiry and anti-rollback; return the manifest.

    Raises:
        SignatureError: not signed by a key in ``trusted``.
        ManifestError: the signed payload is not a valid manifest.
        ExpiredBundleError: ``now`` is past ``expires``.
        RollbackError: ``release_counter`` is below ``min_release_counter``.

    ``allow_expired`` is for re-checking a bundle already installed: expiry stops new
    installs, it must not take a working model away from a device.
    """
    payload = verify_envelope(envelope, PAYLOAD_TYPE, trusted)
    manifest = parse_manifest(payload)
    if not allow_expired and now >= manifest.expires:
        raise ExpiredBundleError(
            f"bundle {manifest.name}@{manifest.version} expired at {manifest.expires.isoformat()}"
        )
    if manifest.release_counter < min_release_counter:
        raise RollbackError(
            f"bundle {manifest.name}@{manifest.version} has release_counter "
            f"{manifest.release_counter}, below the installed {min_release_counter}"
        )
    return manifest


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobVerifier:
    """Streaming length and sha256 check of one blob against its manifest entry.

    Feed chunks as they arrive; :meth:`update` refuses bytes past the declared size at
    once, so a hostile server cannot fill the disk, and :meth:`finish` checks the digest.
    """

    def __init__(self, entry: FileEntry, already: bytes | None = None) -> None:
        self.entry = entry
        self._hash = hashlib.sha256()
        self.received = 0
        if already:
            self.update(already)

    def update(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.entry.size:
            raise SizeMismatchError(
                f"file {self.entry.name!r} is longer than the {self.entry.size} bytes "
                f"the manifest declares"
            )
        self._hash.update(chunk)

    def finish(self) -> None:
        if self.received != self.entry.size:
            raise SizeMismatchError(
                f"file {self.entry.name!r} is {self.received} bytes, "
                f"manifest says {self.entry.size}"
            )
        digest = self._hash.hexdigest()
        if digest != self.entry.sha256:
            raise DigestMismatchError(
                f"file {self.entry.name!r} has sha256 {digest}, manifest says {self.entry.sha256}"
            )
