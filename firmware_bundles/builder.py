"""Building and signing a bundle: manifest + content-addressed blobs.

Pure: takes bytes, keys and ``now``; returns the envelope and blobs. Writing them to a
directory is :mod:`firmware_bundles.bundle_dir`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_bundles.blob_encoding import MIN_ENCODE_BYTES, encode_entry
from firmware_bundles.dsse import sign_envelope
from firmware_bundles.errors import ManifestError
from firmware_bundles.manifest import (
    PAYLOAD_TYPE,
    ZSTD,
    HealthCheck,
    Manifest,
    TensorSpec,
    parse_manifest,
)
from firmware_bundles.verify import sha256_hex

MODEL_FILE_NAMES = {"onnxruntime": "model.onnx", "tflite": "model.tflite"}


@dataclass(frozen=True)
class BuiltBundle:
    manifest: Manifest
    envelope: bytes
    blobs: dict[str, bytes]  # sha256 -> bytes as stored (zstd-compressed when encoded)

    @property
    def manifest_sha256(self) -> str:
        """The bundle's identity: sha256 of the signed envelope bytes."""
        return sha256_hex(self.envelope)


def build_bundle(
    *,
    name: str,
    version: str,
    release_counter: int,
    runtime: str,
    model: bytes,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    golden_inputs: bytes,
    golden_outputs: bytes,
    hardware_classes: Sequence[str],
    key: Ed25519PrivateKey,
    now: datetime,
    valid_for: timedelta = timedelta(days=365),
    health_check: HealthCheck | None = None,
    compression: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, tuple[str, bytes]] | None = None,
    trial: Mapping[str, Any] | None = None,
    blob_encoding: str | None = ZSTD,
    encode_min_bytes: int = MIN_ENCODE_BYTES,
) -> BuiltBundle:
    """Assemble, validate and sign a bundle.

    Args:
        extra_files: name -> (role, bytes) for drift references or configs.
        blob_encoding: ``"zstd"`` stores each file of at least ``encode_min_bytes``
            compressed when that shrinks its download; None stores every file as is.
    """
    if runtime not in MODEL_FILE_NAMES:
        raise ManifestError(f"unknown runtime {runtime!r}; known: {sorted(MODEL_FILE_NAMES)}")
    named: list[tuple[str, str, bytes]] = [
        (MODEL_FILE_NAMES[runtime], "model", model),
        ("golden_inputs.npz", "golden_inputs", golden_inputs),
        ("golden_outputs.npz", "golden_outputs", golden_outputs),
    ]
    for file_name, (role, data) in (extra_files or {}).items():
        named.append((file_name, role, data))
    blobs: dict[str, bytes] = {}
    entries = []
    for file_name, role, data in named:
        entry, stored = encode_entry(
            file_name, role, data, encoding=blob_encoding, min_bytes=encode_min_bytes
        )
        blobs[entry.sha256] = stored
        entries.append(entry)
    manifest = Manifest(
        name=name,
        version=version,
        release_counter=release_counter,
        created=now.replace(microsecond=0),
        expires=(now + valid_for).replace(microsecond=0),
        hardware_classes=tuple(hardware_classes),
        runtime=runtime,
        files=tuple(entries),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        health_check=health_check or HealthCheck(),
        compression=dict(compression) if compression is not None else None,
        trial=dict(trial) if trial is not None else None,
    )
    payload = manifest.to_bytes()
    # Round-trip through the parser so a bundle we build is one a device will accept.
    parse_manifest(payload)
    return BuiltBundle(manifest, sign_envelope(PAYLOAD_TYPE, payload, key), blobs)
