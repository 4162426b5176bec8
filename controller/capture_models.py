"""The data-capture tables: captures, each device's part in one, and the command outbox.

- ``captures``: what an operator (or a rollout) asked for: a target, a bundle, a rate,
  a cap per device and an expiry.
- ``capture_devices``: one row per (capture, device): where the device stands (from its
  ``up/capture`` reports) and its one upload: the blob (in the blob store), the row
  count, and the bundle, model name and version the rows came from. The unique
  (capture, device) pair is what makes a device's upload one file, and a repeat of it
  idempotent.
- ``capture_commands``: per device, the version of its capture set (bumped in the same
  transaction as any change to it) and the version the broker last acknowledged: a
  transactional outbox, so a controller killed between commit and publish loses nothing.

Kept in their own module (imported by :mod:`controller.db`) like the compression jobs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.models import Base, BigId, Bundle, utcnow

# Capture status.
ACTIVE = "active"  # devices sample until the expiry or their cap
CANCELED = "canceled"  # an operator stopped it; devices discard what they have
FINISHED = "finished"  # expired, or every device done: uploads are still accepted
CAPTURE_STATUSES = (ACTIVE, CANCELED, FINISHED)

# A device's part: "requested" until it reports; then as it reports (wire statuses),
# except "uploaded", which only an accepted upload sets.
REQUESTED = "requested"
DEVICE_STATUSES = (REQUESTED, "capturing", "uploading", "uploaded", "empty", "canceled", "failed")
DEVICE_DONE = ("uploaded", "empty", "canceled", "failed")


class Capture(Base):
    __tablename__ = "captures"
    __table_args__ = (sa.Index("ix_captures_status_expires", "status", "expires_at"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), default="")
    # What was asked: {"devices", "tag", "hardware_class", "rollout_id", "wave"}.
    target: Mapped[dict[str, Any]]
    # Only while serving this bundle (None: any; a device keeps to the first it samples).
    bundle_id: Mapped[int | None] = mapped_column(sa.ForeignKey("bundles.id"))
    rollout_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    rate: Mapped[float]
    max_samples: Mapped[int]
    expires_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(sa.String(16), default=ACTIVE)
    created_by: Mapped[str] = mapped_column(sa.String(128), default="")
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    bundle: Mapped[Bundle | None] = relationship()


class CaptureDevice(Base):
    __tablename__ = "capture_devices"
    __table_args__ = (
        sa.UniqueConstraint("capture_id", "device_id"),
        sa.Index("ix_capture_devices_device", "device_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    capture_id: Mapped[str] = mapped_column(sa.ForeignKey("captures.id"))
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"))
    status: Mapped[str] = mapped_column(sa.String(16), default=REQUESTED)
    samples: Mapped[int] = mapped_column(default=0)
    message: Mapped[str] = mapped_column(sa.Text, default="")
    # When the broker acknowledged a capture set listing this capture (epoch seconds).
    notified_at: Mapped[float | None]
    # Device clock of the last report applied: an older report never overwrites a newer.
    reported_ts: Mapped[float | None]
    # The upload.
    blob_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    upload_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    bundle_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    model_name: Mapped[str | None] = mapped_column(sa.String(128))
    model_version: Mapped[str | None] = mapped_column(sa.String(128))
    uploaded_at: Mapped[datetime | None]


class CaptureCommand(Base):
    """A device's capture set: ``version`` changes with it, ``published_version`` follows
    the broker's acknowledgements."""

    __tablename__ = "capture_commands"
    __table_args__ = (sa.Index("ix_capture_commands_pending", "published_version", "version"),)

    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"), primary_key=True)
    version: Mapped[int] = mapped_column(sa.BigInteger, default=1)
    published_version: Mapped[int] = mapped_column(sa.BigInteger, default=0)
