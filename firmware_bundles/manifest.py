"""The bundle manifest: what a bundle holds and how the device should check it.

Pure module: parses and validates bytes, never touches the filesystem or the network.
Every field is checked on parse so that code past this point can trust the types.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from firmware_bundles.errors import ManifestError

SCHEMA_VERSION = 1
PAYLOAD_TYPE = "application/vnd.edgefleet.manifest.v1+json"
RUNTIMES = ("onnxruntime", "tflite")
# Roles a file can play in a bundle; the agent looks files up by role, not by name.
FILE_ROLES = ("model", "golden_inputs", "golden_outputs", "drift_reference", "config")
# How a blob may be stored; absent means as is. See firmware_bundles.blob_encoding.
ZSTD = "zstd"
ENCODINGS = (ZSTD,)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_DTYPES = frozenset(
    {"float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"}
)


@dataclass(frozen=True)
class FileEntry:
    """One content-addressed blob of the bundle.

    ``sha256`` and ``size`` describe the bytes as stored and downloaded (the blob's
    address). With an ``encoding`` the stored bytes are compressed, and ``decoded_sha256``
    / ``decoded_size`` describe the file the device installs; without one they are absent
    and the stored bytes are the file.
    """

    name: str
    role: str
    sha256: str
    size: int
    encoding: str | None = None
    decoded_sha256: str | None = None
    decoded_size: int | None = None

    @property
    def encoded(self) -> bool:
        return self.encoding is not None

    @property
    def content_sha256(self) -> str:
        """sha256 of the installed (decoded) file."""
        return self.decoded_sha256 if self.decoded_sha256 is not None else self.sha256

    @property
    def content_size(self) -> int:
        """Length of the installed (decoded) file."""
        return self.decoded_size if self.decoded_size is not None else self.size

    def decoded_entry(self) -> FileEntry:
        """The plain entry of the installed file (what a slot holds and re-verifies)."""
        return FileEntry(self.name, self.role, self.content_sha256, self.content_size)

    def to_dict(self) -> dict[str, Any]:
        # Plain entries keep exactly the fields older agents know.
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output; ``None`` marks a free dim."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class HealthCheck:
    """How the device decides that a freshly installed model works.

    Golden inputs must give the golden outputs within ``atol + rtol * |expected|``
    and every health-check inference must finish within ``latency_budget_ms``.
    """

    atol: float = 1e-3
    rtol: float = 1e-3
    latency_budget_ms: float = 1000.0


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest. Build with :func:`parse_manifest` or directly."""

    name: str
    version: str
    release_counter: int
    created: datetime
    expires: datetime
    hardware_classes: tuple[str, ...]
    runtime: str
    files: tuple[FileEntry, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    health_check: HealthCheck = field(default_factory=HealthCheck)
    compression: dict[str, Any] | None = None
    # Default trial policy for devices (agent.trial.TrialPolicy fields); a rollout may override.
    trial: dict[str, Any] | None = None

    def file(self, role: str) -> FileEntry:
        """Return the file with ``role``; raise :class:`ManifestError` if absent."""
        for entry in self.files:
            if entry.role == role:
                return entry
        raise ManifestError(f"manifest {self.name}@{self.version} has no file with role {role!r}")

    def has_role(self, role: str) -> bool:
        return any(entry.role == role for entry in self.files)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = SCHEMA_VERSION
        data["created"] = _format_time(self.created)
        data["expires"] = _format_time(self.expires)
        data["hardware_classes"] = list(self.hardware_classes)
        for key in ("inputs", "outputs"):
            for spec in data[key]:
                spec["shape"] = list(spec["shape"])
        data["files"] = [f.to_dict() for f in self.files]
        return data

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): the exact bytes that get signed."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def _format_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: object, key: str) -> datetime:
    if not isinstance(value, str):
        raise ManifestError(f"manifest field {key!r} must be an RFC 3339 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ManifestError(f"manifest field {key!r} is not a valid time: {value!r}") from exc
    if parsed.tzinfo is None:
        raise ManifestError(f"manifest field {key!r} has no timezone: {value!r}")
    return parsed


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise ManifestError(f"manifest is missing field {key!r}")
    value = data[key]
    # bool is an int subclass; a counter or size given as true/false is a type error.
    if (
        isinstance(value, bool)
        and kind is not bool
        and bool not in (kind if isinstance(kind, tuple) else (kind,))
    ):
        raise ManifestError(f"manifest field {key!r} has wrong type bool")
    if not isinstance(value, kind):
        raise ManifestError(
            f"manifest field {key!r} has wrong type {type(value).__name__}, value {value!r}"
        )
    return value


def _parse_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ManifestError(f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-'")
    return value


def _digest_and_size(
    raw: dict[str, Any], name: str, sha_key: str, size_key: str
) -> tuple[str, int]:
    sha = _require(raw, sha_key, str)
    if not _SHA256_RE.match(sha):
        raise ManifestError(f"file {name!r} has an invalid {sha_key} {sha!r}")
    size = _require(raw, size_key, int)
    if size < 0:
        raise ManifestError(f"file {name!r} has a negative {size_key} {size}")
    return sha, size


def _parse_file(raw: object) -> FileEntry:
    if not isinstance(raw, dict):
        raise ManifestError(f"manifest file entry must be an object, got {raw!r}")
    name = _parse_name(_require(raw, "name", str), "file name")
    role = _require(raw, "role", str)
    if role not in FILE_ROLES:
        raise ManifestError(f"file {name!r} has unknown role {role!r}; known: {FILE_ROLES}")
    sha, size = _digest_and_size(raw, name, "sha256", "size")
    encoding = raw.get("encoding")
    if encoding is None:
        extra = [k for k in ("decoded_sha256", "decoded_size") if raw.get(k) is not None]
        if extra:
            raise ManifestError(f"file {name!r} has {extra} but no encoding")
        return FileEntry(name=name, role=role, sha256=sha, size=size)
    if encoding not in ENCODINGS:
        raise ManifestError(f"file {name!r} has unknown encoding {encoding!r}; known: {ENCODINGS}")
    decoded_sha, decoded_size = _digest_and_size(raw, name, "decoded_sha256", "decoded_size")
    return FileEntry(name, role, sha, size, encoding, decoded_sha, decoded_size)


def _parse_tensor(raw: object) -> TensorSpec:
    if not isinstance(raw, dict):
        raise ManifestError(f"tensor spec must be an object, got {raw!r}")
    name = _require(raw, "name", str)
    dtype = _require(raw, "dtype", str)
    if dtype not in _DTYPES:
        raise ManifestError(f"tensor {name!r} has unsupported dtype {dtype!r}")
    shape_raw = _require(raw, "shape", list)
    shape: list[int | None] = []
    for dim in shape_raw:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 0):
            raise ManifestError(f"tensor {name!r} has an invalid dimension {dim!r}")
        shape.append(dim)
    return TensorSpec(name=name, dtype=dtype, shape=tuple(shape))


def _parse_health(raw: object) -> HealthCheck:
    if not isinstance(raw, dict):
        raise ManifestError(f"health_check must be an object, got {raw!r}")
    values: dict[str, float] = {}
    for key in ("atol", "rtol", "latency_budget_ms"):
        value = _require(raw, key, (int, float))
        if value < 0:
            raise ManifestError(f"health_check.{key} must be >= 0, got {value}")
        values[key] = float(value)
    return HealthCheck(**values)


def manifest_from_dict(data: object) -> Manifest:
    """Validate a decoded JSON object and return a :class:`Manifest`."""
    if not isinstance(data, dict):
        raise ManifestError(f"manifest must be a JSON object, got {type(data).__name__}")
    schema = _require(data, "schema", int)
    if schema != SCHEMA_VERSION:
        raise ManifestError(
            f"unsupported manifest schema {schema}; this build reads {SCHEMA_VERSION}"
        )
    runtime = _require(data, "runtime", str)
    if runtime not in RUNTIMES:
        raise ManifestError(f"unknown runtime {runtime!r}; known: {RUNTIMES}")
    counter = _require(data, "release_counter", int)
    if counter < 0:
        raise ManifestError(f"release_counter must be >= 0, got {counter}")
    hw = _require(data, "hardware_classes", list)
    if not hw or not all(isinstance(h, str) and _NAME_RE.match(h) for h in hw):
        raise ManifestError(f"hardware_classes must be a non-empty list of names, got {hw!r}")
    files = tuple(_parse_file(f) for f in _require(data, "files", list))
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ManifestError(f"manifest names a file twice: {names}")
    if not any(f.role == "model" for f in files):
        raise ManifestError("manifest has no file with role 'model'")
    created = _parse_time(data.get("created"), "created")
    expires = _parse_time(data.get("expires"), "expires")
    if expires <= created:
        raise ManifestError(f"manifest expires ({expires}) before it was created ({created})")
    compression = data.get("compression")
    if compression is not None and not isinstance(compression, dict):
        raise ManifestError("manifest field 'compression' must be an object or null")
    trial = data.get("trial")
    if trial is not None and not isinstance(trial, dict):
        raise ManifestError("manifest field 'trial' must be an object or null")
    return Manifest(
        name=_parse_name(_require(data, "name", str), "bundle name"),
        version=_parse_name(_require(data, "version", str), "bundle version"),
        release_counter=counter,
        created=created,
        expires=expires,
        hardware_classes=tuple(hw),
        runtime=runtime,
        files=files,
        inputs=tuple(_parse_tensor(t) for t in _require(data, "inputs", list)),
        outputs=tuple(_parse_tensor(t) for t in _require(data, "outputs", list)),
        health_check=_parse_health(data.get("health_check", asdict(HealthCheck()))),
        compression=compression,
        trial=trial,
    )


def parse_manifest(payload: bytes) -> Manifest:
    """Parse manifest bytes (already signature-checked) into a :class:`Manifest`."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
    return manifest_from_dict(data)
