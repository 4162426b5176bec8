"""The controller's release key (signs bundles it builds) and the keys it trusts for uploads.

In development a missing release key is generated on first start, so the embedded
defaults work out of the box; in production a missing key is a startup error (no
signing key is ever invented where devices would come to trust it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from controller.errors import SettingsError
from controller.settings import Settings
from firmware_bundles.bundle_dir import atomic_write
from firmware_bundles.errors import KeyFileError
from firmware_bundles.keys import key_id, load_private_key, load_public_key, public_pem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseKeys:
    private: Ed25519PrivateKey
    public_path: Path  # PEM of the release public key: what devices are provisioned with
    trusted: dict[str, Ed25519PublicKey]  # keyid -> key; always includes the release key

    @property
    def release_key_id(self) -> str:
        return key_id(self.private.public_key())


def _generate(path: Path) -> Ed25519PrivateKey:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: two replicas starting at once must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_private_key(path)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    log.warning("generated a development release key at %s", path)
    return key


def _public_path(settings: Settings, private_path: Path, key: Ed25519PrivateKey) -> Path:
    pem = public_pem(key.public_key())
    for candidate in (
        private_path.with_suffix(".pub"),
        settings.data_dir / "keys" / f"{private_path.stem}.pub",
    ):
        try:
            if candidate.is_file() and candidate.read_bytes() == pem:
                return candidate
            if not candidate.exists():
                atomic_write(candidate, pem)
                return candidate
        except OSError:
            continue
    raise SettingsError(f"cannot write the release public key next to {private_path}")


def load_release_keys(settings: Settings) -> ReleaseKeys:
    """Load (or, in development, create) the release key and the trusted upload keys.

    Raises:
        SettingsError: the key is missing in production, or a key file is unusable.
    """
    path = settings.release_key_path
    try:
        if path.exists():
            key = load_private_key(path)
        elif settings.is_production:
            raise SettingsError(
                f"EDGEFLEET_RELEASE_KEY: release key {path} does not exist; with "
                "EDGEFLEET_ENV=production create one (`edgefleet keys init`) and point to it"
            )
        else:
            key = _generate(path)
    except KeyFileError as exc:
        raise SettingsError(f"EDGEFLEET_RELEASE_KEY: {exc}") from exc
    trusted = {key_id(key.public_key()): key.public_key()}
    for pub in settings.trusted_keys:
        try:
            public = load_public_key(pub)
        except KeyFileError as exc:
            raise SettingsError(f"EDGEFLEET_TRUSTED_KEYS: {exc}") from exc
        trusted[key_id(public)] = public
    return ReleaseKeys(key, _public_path(settings, path, key), trusted)
