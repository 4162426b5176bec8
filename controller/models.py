"""The controller's tables (SQLAlchemy 2 typed models).

Times are stored in UTC; :class:`UTCDateTime` hands them back timezone-aware on every
backend (SQLite keeps no zone). Device-reported times (``ts``, telemetry windows) stay
epoch seconds as sent, in double precision.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Per-device rollout status.
PENDING = "pending"
IN_PROGRESS = "in_progress"
SUCCEEDED = "succeeded"
FAILED = "failed"
# The device was retargeted by a newer deployment before this one finished.
SUPERSEDED = "superseded"
DEVICE_STATUSES = (PENDING, IN_PROGRESS, SUCCEEDED, FAILED, SUPERSEDED)
OPEN_STATUSES = (PENDING, IN_PROGRESS)

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite rowid autoincrement


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on SQLite and PostgreSQL alike."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the controller stores UTC only")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: UTCDateTime,
        float: sa.Double(),
        dict[str, Any]: sa.JSON(),
        list[str]: sa.JSON(),
    }


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.id"
    )


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id"), index=True)
    version: Mapped[str] = mapped_column(sa.String(128))
    runtime: Mapped[str] = mapped_column(sa.String(16))
    sha256: Mapped[str] = mapped_column(sa.String(64))  # blob in the blob store
    size: Mapped[int] = mapped_column(sa.BigInteger)
    filename: Mapped[str] = mapped_column(sa.String(255))
    created: Mapped[datetime] = mapped_column(default=utcnow)
    model: Mapped[Model] = relationship(back_populates="versions")


class Bundle(Base):
    __tablename__ = "bundles"
    __table_args__ = (sa.Index("ix_bundles_name_counter", "name", "release_counter"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    version: Mapped[str] = mapped_column(sa.String(128))
    release_counter: Mapped[int] = mapped_column(sa.BigInteger)
    # sha256 of the signed envelope bytes: the bundle's identity, and its blob address.
    manifest_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    hardware_classes: Mapped[list[str]]
    runtime: Mapped[str] = mapped_column(sa.String(16))
    manifest: Mapped[dict[str, Any]]
    expires: Mapped[datetime]
    source: Mapped[str] = mapped_column(sa.String(16))  # "built" | "uploaded"
    model_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("model_versions.id"))
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    hardware_class: Mapped[str | None] = mapped_column(sa.String(128), index=True)
    tags: Mapped[list[str]] = mapped_column(default=list)
    online: Mapped[bool] = mapped_column(default=False)
    last_seen: Mapped[datetime | None]
    # Device clock of the last state applied: an older state never overwrites a newer one.
    state_ts: Mapped[float | None]
    phase: Mapped[str | None] = mapped_column(sa.String(32))
    on_trial: Mapped[bool] = mapped_column(default=False)
    active_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    active_name: Mapped[str | None] = mapped_column(sa.String(128))
    active_version: Mapped[str | None] = mapped_column(sa.String(128))
    previous_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    previous_name: Mapped[str | None] = mapped_column(sa.String(128))
    previous_version: Mapped[str | None] = mapped_column(sa.String(128))
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    agent_version: Mapped[str | None] = mapped_column(sa.String(64))
    # Generation of the desired state we published; the device echoes what it follows.
    generation: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    reported_generation: Mapped[int | None] = mapped_column(sa.BigInteger)
    deployment_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    bundle_id: Mapped[int] = mapped_column(sa.ForeignKey("bundles.id"), index=True)
    # What the operator asked for: {"devices": [...], "tag": ..., "hardware_class": ...}.
    target: Mapped[dict[str, Any]]
    trial: Mapped[dict[str, Any] | None]
    created: Mapped[datetime] = mapped_column(default=utcnow)
    bundle: Mapped[Bundle] = relationship()


class DeploymentDevice(Base):
    __tablename__ = "deployment_devices"
    __table_args__ = (
        sa.UniqueConstraint("deployment_id", "device_id"),
        sa.Index("ix_deployment_devices_device_status", "device_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[str] = mapped_column(sa.ForeignKey("deployments.id"))
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"))
    status: Mapped[str] = mapped_column(sa.String(16), default=PENDING)
    phase: Mapped[str | None] = mapped_column(sa.String(32))
    reason_code: Mapped[str | None] = mapped_column(sa.String(64))
    reason_message: Mapped[str | None] = mapped_column(sa.Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TelemetryWindow(Base):
    __tablename__ = "telemetry_windows"
    # A replayed window (QoS 1 redelivery, outbox resend) is stored once.
    __table_args__ = (
        sa.UniqueConstraint("device_id", "seq", "window_start"),
        sa.Index("ix_telemetry_device_end", "device_id", "window_end"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"))
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    window_start: Mapped[float]
    window_end: Mapped[float]
    inference_count: Mapped[int] = mapped_column(sa.BigInteger)
    error_count: Mapped[int] = mapped_column(sa.BigInteger)
    latency_p50_ms: Mapped[float | None]
    latency_p95_ms: Mapped[float | None]
    latency_p99_ms: Mapped[float | None]
    # {"<bucket>": count} (firmware_bundles.latency_histogram): merges exactly.
    latency_histogram: Mapped[dict[str, Any] | None]
    bundle_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class DriftWindow(Base):
    __tablename__ = "drift_windows"
    __table_args__ = (
        sa.UniqueConstraint("device_id", "seq", "window_start"),
        sa.Index("ix_drift_device_end", "device_id", "window_end"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"))
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    window_start: Mapped[float]
    window_end: Mapped[float]
    bundle_sha256: Mapped[str] = mapped_column(sa.String(64))
    features: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceEvent(Base):
    __tablename__ = "device_events"
    __table_args__ = (
        sa.UniqueConstraint("device_id", "ts", "type"),
        sa.Index("ix_device_events_device_ts", "device_id", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"))
    ts: Mapped[float]
    type: Mapped[str] = mapped_column(sa.String(32))
    deployment_id: Mapped[str | None] = mapped_column(sa.String(64))
    bundle_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    code: Mapped[str | None] = mapped_column(sa.String(64))
    message: Mapped[str] = mapped_column(sa.Text, default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
