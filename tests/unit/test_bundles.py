"""Bundle format attacks, as python-tuf writes them: each tampering must be refused."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_bundles.builder import BuiltBundle, build_bundle
from firmware_bundles.bundle_dir import BLOBS_DIR, verify_bundle_dir, write_bundle_dir
from firmware_bundles.dsse import sign_envelope
from firmware_bundles.errors import (
    DigestMismatchError,
    ExpiredBundleError,
    KeyFileError,
    ManifestError,
    MissingFileError,
    RollbackError,
    SignatureError,
    SizeMismatchError,
)
from firmware_bundles.keys import init_keys, key_id, load_private_key, load_public_key
from firmware_bundles.manifest import PAYLOAD_TYPE, TensorSpec, parse_manifest
from firmware_bundles.verify import BlobVerifier, verify_manifest

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)
SPEC = (TensorSpec("x", "float32", (None, 3)),)


def make(key: Ed25519PrivateKey, **overrides: object) -> BuiltBundle:
    args: dict[str, object] = dict(
        name="m",
        version="1.0.0",
        release_counter=5,
        runtime="onnxruntime",
        model=b"model-bytes" * 10,
        inputs=SPEC,
        outputs=SPEC,
        golden_inputs=b"gi",
        golden_outputs=b"go",
        hardware_classes=["generic"],
        key=key,
        now=NOW,
    )
    args.update(overrides)
    return build_bundle(**args)  # type: ignore[arg-type]


@pytest.fixture()
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def trust(key: Ed25519PrivateKey) -> dict[str, object]:
    return {key_id(key.public_key()): key.public_key()}


def test_round_trip(key: Ed25519PrivateKey) -> None:
    bundle = make(key)
    manifest = verify_manifest(bundle.envelope, trust(key), NOW)  # type: ignore[arg-type]
    assert manifest == bundle.manifest
    assert manifest.file("model").size == 110


def test_unknown_key_is_refused(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="not signed by a trusted key"):
        verify_manifest(make(other).envelope, trust(key), NOW)  # type: ignore[arg-type]


def test_payload_changed_after_signing_is_refused(key: Ed25519PrivateKey) -> None:
    env = json.loads(make(key).envelope)
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["release_counter"] = 99
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(json.dumps(env).encode(), trust(key), NOW)  # type: ignore[arg-type]


def test_signature_over_another_payload_type_is_refused(key: Ed25519PrivateKey) -> None:
    envelope = sign_envelope("application/other", make(key).manifest.to_bytes(), key)
    with pytest.raises(SignatureError, match="payloadType"):
        verify_manifest(envelope, trust(key), NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\x00\xff",
        b"[]",
        b'{"payloadType":1}',
        b'{"payloadType":"a","payload":"!!","signatures":[{"keyid":"k","sig":"x"}]}',
    ],
)
def test_garbage_envelopes_raise_signature_error(key: Ed25519PrivateKey, junk: bytes) -> None:
    with pytest.raises(SignatureError):
        verify_manifest(junk, trust(key), NOW)  # type: ignore[arg-type]


def test_expired_and_rolled_back_bundles(key: Ed25519PrivateKey) -> None:
    bundle = make(key, valid_for=timedelta(days=1))
    with pytest.raises(ExpiredBundleError, match="expired"):
        verify_manifest(bundle.envelope, trust(key), NOW + timedelta(days=2))  # type: ignore[arg-type]
    verify_manifest(bundle.envelope, trust(key), NOW + timedelta(days=2), allow_expired=True)  # type: ignore[arg-type]
    with pytest.raises(RollbackError, match="below the installed 6"):
        verify_manifest(bundle.envelope, trust(key), NOW, min_release_counter=6)  # type: ignore[arg-type]


def test_signed_but_invalid_manifest_names_the_field(key: Ed25519PrivateKey) -> None:
    data = make(key).manifest.to_dict()
    data["release_counter"] = "five"
    envelope = sign_envelope(PAYLOAD_TYPE, json.dumps(data).encode(), key)
    with pytest.raises(ManifestError, match="release_counter"):
        verify_manifest(envelope, trust(key), NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("runtime", "tensorflow", "unknown runtime"),
        ("name", "../etc", "invalid bundle name"),
        ("files", [], "no file with role 'model'"),
        ("hardware_classes", [], "hardware_classes"),
        ("expires", "2020-01-01T00:00:00Z", "expires"),
        ("schema", 2, "unsupported manifest schema"),
    ],
)
def test_manifest_validation(
    key: Ed25519PrivateKey, field: str, value: object, message: str
) -> None:
    data = make(key).manifest.to_dict()
    data[field] = value
    with pytest.raises(ManifestError, match=message):
        parse_manifest(json.dumps(data).encode())


def test_blob_verifier_catches_size_and_digest(key: Ed25519PrivateKey) -> None:
    entry = make(key).manifest.file("model")
    long = BlobVerifier(entry)
    with pytest.raises(SizeMismatchError, match="longer"):
        long.update(b"x" * (entry.size + 1))
    short = BlobVerifier(entry)
    short.update(b"x")
    with pytest.raises(SizeMismatchError, match="1 bytes"):
        short.finish()
    wrong = BlobVerifier(entry)
    wrong.update(b"y" * entry.size)
    with pytest.raises(DigestMismatchError, match="sha256"):
        wrong.finish()


def test_bundle_dir_detects_flipped_byte_and_missing_blob(
    key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    bundle = make(key)
    write_bundle_dir(bundle, tmp_path / "b")
    assert verify_bundle_dir(tmp_path / "b", trust(key), NOW).manifest == bundle.manifest  # type: ignore[arg-type]
    blob = tmp_path / "b" / BLOBS_DIR / bundle.manifest.file("model").sha256
    data = bytearray(blob.read_bytes())
    data[3] ^= 0x80
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError, match="model.onnx"):
        verify_bundle_dir(tmp_path / "b", trust(key), NOW)  # type: ignore[arg-type]
    blob.unlink()
    with pytest.raises(MissingFileError, match="model.onnx"):
        verify_bundle_dir(tmp_path / "b", trust(key), NOW)  # type: ignore[arg-type]


def test_key_files(tmp_path: Path) -> None:
    private, public = init_keys(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600
    assert key_id(load_private_key(private).public_key()) == key_id(load_public_key(public))
    with pytest.raises(KeyFileError, match="already exists"):
        init_keys(tmp_path)
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        (tmp_path / "junk.pub").write_bytes(b"junk")
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_key(tmp_path / "absent.pub")
