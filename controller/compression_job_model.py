"""The ``compression_jobs`` table: a compression run on a model version, as a leased job.

A job is claimed through the database (``lease_owner`` + ``lease_expires``, see
:mod:`controller.services.compression_jobs`): the replica running it renews the lease
while it works, and a replica that dies leaves a lease that expires, after which any
other replica may take the job over. Kept in its own module (imported by
:mod:`controller.db` before the schema is created) so that the shared ``models`` module
only grows by what everyone needs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.models import Base, ModelVersion, utcnow

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED)


class CompressionJob(Base):
    __tablename__ = "compression_jobs"
    __table_args__ = (sa.Index("ix_compression_jobs_state_created", "state", "created"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(sa.ForeignKey("model_versions.id"), index=True)
    # What to do: {"method", "options", "target_version", "calibration_sha256", ...}.
    request: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(sa.String(16), default=QUEUED)
    progress: Mapped[float] = mapped_column(default=0.0)
    message: Mapped[str] = mapped_column(sa.Text, default="")
    error: Mapped[str | None] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(default=0)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires: Mapped[datetime | None]
    # The outcome: the new model version and the report that goes into bundle manifests.
    result_version_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("model_versions.id"), index=True
    )
    report: Mapped[dict[str, Any] | None]
    created: Mapped[datetime] = mapped_column(default=utcnow)
    started: Mapped[datetime | None]
    finished: Mapped[datetime | None]
    source: Mapped[ModelVersion] = relationship(foreign_keys=[model_version_id])
    result: Mapped[ModelVersion | None] = relationship(foreign_keys=[result_version_id])
