"""Request and response bodies of the REST API (pydantic), and row -> response builders.

Request models forbid unknown fields, so a misspelt field is a 422 naming it rather
than a silently ignored wish.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller import models as m


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- requests


class ModelCreate(_In):
    name: str = Field(description="model name: letters, digits, '.', '_' or '-'")


class HealthCheckIn(_In):
    atol: float = Field(1e-3, ge=0)
    rtol: float = Field(1e-3, ge=0)
    latency_budget_ms: float = Field(1000.0, ge=0)


class TrialIn(_In):
    """How long a new model serves on trial before a device commits it (agent TrialPolicy)."""

    min_inferences: int | None = Field(None, ge=0)
    min_seconds: float | None = Field(None, ge=0)
    max_seconds: float | None = Field(None, ge=0)
    max_error_rate: float | None = Field(None, ge=0)
    max_p95_ms: float | None = Field(None, ge=0)
    min_samples: int | None = Field(None, ge=0)
    max_boot_attempts: int | None = Field(None, ge=0)

    def to_policy(self) -> dict[str, Any]:
        """Only the fields given; the device fills in its defaults for the rest."""
        return self.model_dump(exclude_unset=True)


class BundleCreate(_In):
    model: str = Field(description="registered model name")
    version: str = Field(description="model version to package")
    bundle_version: str = Field(description="version of the bundle to build")
    name: str | None = Field(None, description="bundle name; defaults to the model name")
    release_counter: int | None = Field(
        None, ge=0, description="anti-rollback counter; defaults to the name's highest + 1"
    )
    hardware_classes: list[str] | None = Field(None, description="defaults to ['generic']")
    health_check: HealthCheckIn | None = None
    trial: TrialIn | None = Field(None, description="default trial policy for devices")


# ---------------------------------------------------------------- responses


class ModelVersionOut(BaseModel):
    id: int
    model: str
    version: str
    runtime: str
    sha256: str
    size: int
    filename: str
    created: datetime

    @classmethod
    def of(cls, row: m.ModelVersion) -> ModelVersionOut:
        return cls(
            id=row.id,
            model=row.model.name,
            version=row.version,
            runtime=row.runtime,
            sha256=row.sha256,
            size=row.size,
            filename=row.filename,
            created=row.created,
        )


class DriftReferenceOut(BaseModel):
    sha256: str
    rows: int
    features: list[str] = Field(description="features binned: inputs, then 'output:...'")


class ModelOut(BaseModel):
    name: str
    created: datetime
    versions: list[ModelVersionOut]

    @classmethod
    def of(cls, row: m.Model) -> ModelOut:
        return cls(
            name=row.name,
            created=row.created,
            versions=[ModelVersionOut.of(v) for v in row.versions],
        )


class FileOut(BaseModel):
    name: str
    role: str
    sha256: str
    size: int
    # Set for a blob stored zstd-compressed: what the device installs after decoding.
    encoding: str | None = None
    decoded_sha256: str | None = None
    decoded_size: int | None = None


class BundleOut(BaseModel):
    id: int
    name: str
    version: str
    release_counter: int
    manifest_sha256: str
    hardware_classes: list[str]
    runtime: str
    source: str
    files: list[FileOut]
    created: datetime
    expires: datetime

    @classmethod
    def of(cls, row: m.Bundle) -> BundleOut:
        return cls(
            id=row.id,
            name=row.name,
            version=row.version,
            release_counter=row.release_counter,
            manifest_sha256=row.manifest_sha256,
            hardware_classes=list(row.hardware_classes),
            runtime=row.runtime,
            source=row.source,
            files=[FileOut(**f) for f in row.manifest.get("files", [])],
            created=row.created,
            expires=row.expires,
        )


class BundleDetail(BundleOut):
    manifest: dict[str, Any]
    # The manifest's compression report (chosen recipe and candidate table), if any.
    compression: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: m.Bundle) -> BundleDetail:
        return cls(
            **BundleOut.of(row).model_dump(),
            manifest=row.manifest,
            compression=row.manifest.get("compression"),
        )


class BundleRefOut(BaseModel):
    manifest_sha256: str
    name: str | None
    version: str | None


class ErrorOut(BaseModel):
    code: str
    message: str


class TelemetryOut(BaseModel):
    seq: int
    window_start: float
    window_end: float
    inference_count: int
    error_count: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    bundle_sha256: str | None
    received_at: datetime

    @classmethod
    def of(cls, row: m.TelemetryWindow) -> TelemetryOut:
        return cls(
            seq=row.seq,
            window_start=row.window_start,
            window_end=row.window_end,
            inference_count=row.inference_count,
            error_count=row.error_count,
            latency_p50_ms=row.latency_p50_ms,
            latency_p95_ms=row.latency_p95_ms,
            latency_p99_ms=row.latency_p99_ms,
            bundle_sha256=row.bundle_sha256,
            received_at=row.received_at,
        )


class EventOut(BaseModel):
    ts: float
    type: str
    rollout_id: str | None
    bundle_sha256: str | None
    code: str | None
    message: str
    received_at: datetime

    @classmethod
    def of(cls, row: m.DeviceEvent) -> EventOut:
        return cls(
            ts=row.ts,
            type=row.type,
            rollout_id=row.rollout_id,
            bundle_sha256=row.bundle_sha256,
            code=row.code,
            message=row.message,
            received_at=row.received_at,
        )


def _ref(sha: str | None, name: str | None, version: str | None) -> BundleRefOut | None:
    return None if sha is None else BundleRefOut(manifest_sha256=sha, name=name, version=version)


class DeviceOut(BaseModel):
    id: str
    hardware_class: str | None
    tags: list[str]
    online: bool
    last_seen: datetime | None
    phase: str | None
    on_trial: bool
    active_bundle: BundleRefOut | None
    previous_bundle: BundleRefOut | None
    last_error: ErrorOut | None
    generation: int
    reported_generation: int | None
    rollout_id: str | None
    agent_version: str | None

    @classmethod
    def of(cls, row: m.Device, now: datetime, offline_after_s: float) -> DeviceOut:
        fresh = row.last_seen is not None and now - row.last_seen <= timedelta(
            seconds=offline_after_s
        )
        return cls(
            id=row.id,
            hardware_class=row.hardware_class,
            tags=list(row.tags or []),
            online=bool(row.online and fresh),
            last_seen=row.last_seen,
            phase=row.phase,
            on_trial=row.on_trial,
            active_bundle=_ref(row.active_sha256, row.active_name, row.active_version),
            previous_bundle=_ref(row.previous_sha256, row.previous_name, row.previous_version),
            last_error=None
            if row.error_code is None
            else ErrorOut(code=row.error_code, message=row.error_message or ""),
            generation=row.generation,
            reported_generation=row.reported_generation,
            rollout_id=row.rollout_id,
            agent_version=row.agent_version,
        )


class DeviceDetail(DeviceOut):
    last_telemetry: TelemetryOut | None


class HealthOut(BaseModel):
    status: str
    db: str
    broker_connected: bool
    ingest: dict[str, Any]
