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
    # The rollout that last set this device's desired state.
    rollout_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Rollout(Base):
    """A bundle rolled out to a target in waves or at a rate, with health gates.

    The engine's state (:class:`controller.rollout_engine.RolloutState`) is persisted in
    the columns from ``status`` to ``acknowledged``; ``lease_owner``/``lease_until`` say
    which controller replica advances it (see :mod:`controller.rollout_worker`).
    """

    __tablename__ = "rollouts"
    __table_args__ = (sa.Index("ix_rollouts_status_lease", "status", "lease_until"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), default="")
    bundle_id: Mapped[int] = mapped_column(sa.ForeignKey("bundles.id"), index=True)
    # What the operator asked for: {"devices": [...], "tag": ..., "hardware_class": ...}.
    target: Mapped[dict[str, Any]]
    # The engine's RolloutPolicy as JSON (controller.rollout_policy codec).
    policy: Mapped[dict[str, Any]]
    trial: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    wave: Mapped[int] = mapped_column(default=-1)
    wave_started_at: Mapped[float | None]
    started_at: Mapped[float | None]
    rate_tokens: Mapped[float] = mapped_column(default=0.0)
    rate_updated_at: Mapped[float | None]
    # Gate kind -> sample count when an operator resumed past it.
    acknowledged: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Latest gate figures, for `rollout status` (written by the tick).
    gates: Mapped[dict[str, Any]] = mapped_column(default=dict)
    gates_at: Mapped[float | None]
    lease_owner: Mapped[str | None] = mapped_column(sa.String(128))
    lease_until: Mapped[float | None]
    created_by: Mapped[str] = mapped_column(sa.String(128), default="")
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    bundle: Mapped[Bundle] = relationship()


class RolloutDevice(Base):
    """One device's execution of one rollout (states: controller.rollout_engine)."""

    __tablename__ = "rollout_devices"
    __table_args__ = (
        sa.UniqueConstraint("rollout_id", "device_id"),
        sa.Index("ix_rollout_devices_rollout_state", "rollout_id", "state"),
        sa.Index("ix_rollout_devices_device", "device_id"),
        sa.Index("ix_rollout_devices_unpublished", "published_at", "desired_sha256"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rollout_id: Mapped[str] = mapped_column(sa.ForeignKey("rollouts.id"))
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"))
    wave: Mapped[int]
    state: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    reason_code: Mapped[str | None] = mapped_column(sa.String(64))
    reason_message: Mapped[str | None] = mapped_column(sa.Text)
    # What the device ran when it was notified: where a roll back sends it.
    previous_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    previous_name: Mapped[str | None] = mapped_column(sa.String(128))
    previous_version: Mapped[str | None] = mapped_column(sa.String(128))
    # What the controller last told the device to run (the target, or on a roll back
    # its previous bundle), and when the broker acknowledged that desired state: None
    # while it is still to be (re)published (a transactional outbox).
    desired_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    published_at: Mapped[float | None]
    # Epoch seconds (the engine's clock).
    notified_at: Mapped[float | None]
    finished_at: Mapped[float | None]
    updated_at: Mapped[float]


class AuditEntry(Base):
    """Who did what to which rollout, and when (operators and the engine alike)."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_rollout", "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(sa.String(128))
    action: Mapped[str] = mapped_column(sa.String(32))
    rollout_id: Mapped[str | None] = mapped_column(sa.String(32))
    detail: Mapped[str] = mapped_column(sa.Text, default="")


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
        # The drift check reads one bundle's recent windows across the fleet.
        sa.Index("ix_drift_bundle_end", "bundle_sha256", "window_end"),
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
    # The rollout the device was following (the wire's ``deployment_id``).
    rollout_id: Mapped[str | None] = mapped_column(sa.String(64))
    bundle_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    code: Mapped[str | None] = mapped_column(sa.String(64))
    message: Mapped[str] = mapped_column(sa.Text, default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
