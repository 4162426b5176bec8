"""Tables for fleet monitoring: window roll-ups, drift alerts, webhook deliveries, leases,
and the reference data of model versions.

Raw telemetry and drift windows (:mod:`controller.models`) are kept for
``EDGEFLEET_TELEMETRY_RAW_RETENTION_S``; then they are summed into one roll-up row per
device, bundle and time bucket (``EDGEFLEET_TELEMETRY_BUCKET_S``, by window end), which
remembers the window numbers it holds (so a late copy of a window is not counted twice)
and is kept for ``EDGEFLEET_TELEMETRY_RETENTION_S``. See
:mod:`controller.services.window_store`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from controller.models import Base, BigId, utcnow


class TelemetryRollup(Base):
    __tablename__ = "telemetry_rollups"
    __table_args__ = (
        sa.UniqueConstraint("device_id", "bundle_sha256", "bucket_start"),
        sa.Index("ix_telemetry_rollups_bucket", "bucket_start"),
        sa.Index("ix_telemetry_rollups_bundle_bucket", "bundle_sha256", "bucket_start"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"))
    bundle_sha256: Mapped[str] = mapped_column(sa.String(64))  # "" -> no model served
    bucket_start: Mapped[float]
    windows: Mapped[int] = mapped_column(sa.BigInteger)
    inference_count: Mapped[int] = mapped_column(sa.BigInteger)
    error_count: Mapped[int] = mapped_column(sa.BigInteger)
    latency_histogram: Mapped[dict[str, Any]]
    first_start: Mapped[float]
    first_end: Mapped[float]  # earliest and latest end of a window in it
    last_end: Mapped[float]
    # Window numbers summed in here: [[first, last], ...] (controller.window_merge).
    seqs: Mapped[list[Any]] = mapped_column(sa.JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DriftRollup(Base):
    __tablename__ = "drift_rollups"
    __table_args__ = (
        sa.UniqueConstraint("device_id", "bundle_sha256", "bucket_start"),
        sa.Index("ix_drift_rollups_bucket", "bucket_start"),
        sa.Index("ix_drift_rollups_bundle_bucket", "bundle_sha256", "bucket_start"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"))
    bundle_sha256: Mapped[str] = mapped_column(sa.String(64))
    bucket_start: Mapped[float]
    windows: Mapped[int] = mapped_column(sa.BigInteger)
    features: Mapped[dict[str, Any]]
    first_start: Mapped[float]
    first_end: Mapped[float]  # earliest and latest end of a window in it
    last_end: Mapped[float]
    seqs: Mapped[list[Any]] = mapped_column(sa.JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """A named job only one replica runs at a time (roll-ups, drift checks)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(128), default="")
    until: Mapped[float] = mapped_column(default=0.0)


class DriftAlert(Base):
    """Drift found on some devices running one bundle: what, where, since when.

    ``status``: ``pending`` (found; waits for confirmation by the next checks),
    ``open`` (confirmed; delivered to webhooks), ``resolved`` (quiet again), or
    ``dismissed`` (a pending alert the next check did not confirm).
    """

    __tablename__ = "drift_alerts"
    __table_args__ = (
        sa.Index("ix_drift_alerts_bundle_status", "bundle_sha256", "status"),
        # At most one active alert per bundle, whatever two replicas' checks do at once.
        sa.Index(
            "uq_drift_alerts_active_bundle",
            "bundle_sha256",
            unique=True,
            postgresql_where=sa.text("status IN ('pending', 'open')"),
            sqlite_where=sa.text("status IN ('pending', 'open')"),
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    bundle_sha256: Mapped[str] = mapped_column(sa.String(64))
    bundle_name: Mapped[str] = mapped_column(sa.String(128))
    bundle_version: Mapped[str] = mapped_column(sa.String(128))
    # The model version the bundle was built from ("" for a bundle uploaded signed).
    model_name: Mapped[str] = mapped_column(sa.String(128), default="")
    model_version: Mapped[str] = mapped_column(sa.String(128), default="")
    status: Mapped[str] = mapped_column(sa.String(16))
    opened_at: Mapped[float]
    last_seen_at: Mapped[float]
    resolved_at: Mapped[float | None]
    # Checks in a row that found drift / found none (for confirming and resolving).
    confirmations: Mapped[int] = mapped_column(default=1)
    quiet_checks: Mapped[int] = mapped_column(default=0)
    devices: Mapped[list[str]]
    # [{"name", "devices": [...], "since", "psi", "jensen_shannon", ..., "n"}, ...]
    features: Mapped[list[Any]] = mapped_column(sa.JSON)
    summary: Mapped[str] = mapped_column(sa.Text, default="")
    created: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One alert event to deliver to one webhook URL, retried with backoff."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (sa.Index("ix_webhook_deliveries_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    alert_id: Mapped[str] = mapped_column(sa.ForeignKey("drift_alerts.id"), index=True)
    event: Mapped[str] = mapped_column(sa.String(64))
    url: Mapped[str] = mapped_column(sa.Text)
    payload: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[float]
    delivered_at: Mapped[float | None]
    gave_up_at: Mapped[float | None]
    last_error: Mapped[str] = mapped_column(sa.Text, default="")
    lease_owner: Mapped[str | None] = mapped_column(sa.String(128))
    lease_until: Mapped[float | None]
    created: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersionReference(Base):
    """Reference data of a model version (an ``.npz`` of model inputs in the blob store):
    every bundle built from the version carries drift bins computed from it."""

    __tablename__ = "model_version_references"

    model_version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("model_versions.id"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(sa.String(64))
    rows: Mapped[int] = mapped_column(sa.BigInteger)
    features: Mapped[list[str]]
    # firmware_bundles.drift_reference.ExtractorConfig fields: the author's feature choice.
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(default=utcnow)
