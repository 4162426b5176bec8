"""Compression jobs in the database: submit, claim under a lease, renew, finish.

Any replica may run any job, so every step that changes who owns a job is one
conditional ``UPDATE`` whose ``WHERE`` says what must still hold (queued, or running
under an expired lease; or still owned by me), and its row count says whether this
replica won. On PostgreSQL the candidate row is first picked with
``SELECT ... FOR UPDATE SKIP LOCKED`` so two replicas polling at once pick different
jobs instead of racing for the same one; SQLite has one writer and needs no more.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from controller.blobstore import BlobStore
from controller.compression_job_model import (
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    CompressionJob,
)
from controller.compression_request import JobRequestError, JobSpec, parse_job_request
from controller.errors import ConflictError, InvalidRequestError, NotFoundError, ServiceError
from controller.models import Model, ModelVersion
from controller.names import check_name
from controller.services.model_registry import get_model, get_version
from firmware_bundles.errors import BundleError
from firmware_bundles.golden import decode_arrays


class TooManyJobsError(ServiceError):
    """429: the queue of compression jobs is full."""

    status_code = 429


@dataclass(frozen=True)
class Upload:
    """An optional ``.npz`` uploaded with the request (calibration or evaluation data)."""

    filename: str
    source: BinaryIO


def _store_npz(store: BlobStore, upload: Upload | None, what: str, max_bytes: int) -> str | None:
    if upload is None:
        return None
    with store.stage(max_bytes=max_bytes) as staged:
        staged.copy_from(upload.source)
        staged.finish()
        try:
            arrays = decode_arrays(staged.path.read_bytes(), f"{what} data {upload.filename!r}")
        except BundleError as exc:
            raise InvalidRequestError(str(exc)) from None
        if not arrays:
            raise InvalidRequestError(f"{what} data {upload.filename!r} holds no arrays")
        return staged.commit()


def submit_job(
    session: Session,
    store: BlobStore,
    *,
    name: str,
    version: str,
    method: str,
    options: dict[str, Any],
    target_version: str | None,
    calibration: Upload | None,
    evaluation: Upload | None,
    max_upload_bytes: int,
    max_queued: int,
) -> CompressionJob:
    """Queue a compression of ``name@version``; a worker on any replica will run it.

    Raises:
        NotFoundError: no such model or version.
        InvalidRequestError: not an ONNX version, a bad method/option, or bad ``.npz``.
        ConflictError: the target version exists already.
        TooManyJobsError: ``max_queued`` jobs are queued or running.
    """
    source = get_version(session, name, version)
    if source.runtime != "onnxruntime":
        raise InvalidRequestError(
            f"model {name}@{version} is a {source.runtime} model; compression jobs take ONNX"
        )
    try:
        spec = parse_job_request(
            method, options, source_version=version, target_version=target_version
        )
    except JobRequestError as exc:
        raise InvalidRequestError(str(exc)) from None
    check_name(spec.target_version, "target version")
    model = get_model(session, name)
    if any(v.version == spec.target_version for v in model.versions):
        raise ConflictError(f"model {name!r} already has version {spec.target_version!r}")
    open_jobs = session.scalar(
        sa.select(sa.func.count())
        .select_from(CompressionJob)
        .where(CompressionJob.state.in_((QUEUED, RUNNING)))
    )
    if (open_jobs or 0) >= max_queued:
        raise TooManyJobsError(
            f"{open_jobs} compression jobs are queued or running (limit "
            f"EDGEFLEET_COMPRESSION_MAX_QUEUED={max_queued}); try again when one finishes"
        )
    spec = JobSpec.from_dict(
        {
            **spec.to_dict(),
            "calibration_sha256": _store_npz(store, calibration, "calibration", max_upload_bytes),
            "evaluation_sha256": _store_npz(store, evaluation, "evaluation", max_upload_bytes),
        }
    )
    job = CompressionJob(
        id=uuid.uuid4().hex,
        model_version_id=source.id,
        request=spec.to_dict(),
        state=QUEUED,
        message="queued",
    )
    session.add(job)
    session.commit()
    return get_job(session, job.id)


def get_job(session: Session, job_id: str) -> CompressionJob:
    job = session.scalar(
        sa.select(CompressionJob)
        .options(
            selectinload(CompressionJob.source).selectinload(ModelVersion.model),
            selectinload(CompressionJob.result).selectinload(ModelVersion.model),
        )
        .where(CompressionJob.id == job_id)
    )
    if job is None:
        raise NotFoundError(f"no compression job {job_id[:64]!r}")
    return job


def list_jobs(session: Session, model: str | None = None, limit: int = 100) -> list[CompressionJob]:
    query = (
        sa.select(CompressionJob)
        .options(
            selectinload(CompressionJob.source).selectinload(ModelVersion.model),
            selectinload(CompressionJob.result).selectinload(ModelVersion.model),
        )
        .order_by(CompressionJob.created.desc())
        .limit(limit)
    )
    if model is not None:
        query = query.join(CompressionJob.source).join(Model).where(Model.name == model)
    return list(session.scalars(query))


def _rows_changed(session: Session, statement: sa.Update) -> int:
    result = cast("sa.CursorResult[Any]", session.execute(statement))
    return int(result.rowcount)


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        CompressionJob.state == QUEUED,
        sa.and_(CompressionJob.state == RUNNING, CompressionJob.lease_expires < now),
    )


def claim_next(
    session: Session, owner: str, now: datetime, *, lease_s: float, max_attempts: int
) -> CompressionJob | None:
    """Take the oldest queued job, or one whose owner's lease expired; None if none.

    A job that has been taken ``max_attempts`` times already (each time its runner died
    or lost the lease) is failed instead of being tried again.
    """
    while True:
        pick = (
            sa.select(CompressionJob.id, CompressionJob.attempts)
            .where(_claimable(now))
            .order_by(CompressionJob.created, CompressionJob.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        row = session.execute(pick).first()
        if row is None:
            session.rollback()
            return None
        job_id, attempts = row
        if attempts >= max_attempts:
            session.execute(
                sa.update(CompressionJob)
                .where(CompressionJob.id == job_id, _claimable(now))
                .values(
                    state=FAILED,
                    finished=now,
                    lease_owner=None,
                    error=f"gave up after {attempts} attempt(s): each time the replica "
                    "running it stopped renewing its lease (killed, or the job crashed it)",
                )
            )
            session.commit()
            continue
        won = _rows_changed(
            session,
            sa.update(CompressionJob)
            .where(CompressionJob.id == job_id, _claimable(now))
            .values(
                state=RUNNING,
                lease_owner=owner,
                lease_expires=now + timedelta(seconds=lease_s),
                attempts=CompressionJob.attempts + 1,
                started=now,
                message="starting" if attempts == 0 else f"taken over (attempt {attempts + 1})",
            ),
        )
        session.commit()
        if won == 1:
            return get_job(session, job_id)
        # Another replica took it between our SELECT and UPDATE (SQLite): look again.


def _owned(job_id: str, owner: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        CompressionJob.id == job_id,
        CompressionJob.state == RUNNING,
        CompressionJob.lease_owner == owner,
    )


def renew_lease(
    session: Session,
    job_id: str,
    owner: str,
    now: datetime,
    *,
    lease_s: float,
    progress: float,
    message: str,
) -> bool:
    """Extend the lease and record progress; False if this replica no longer owns the job."""
    return _update_owned(
        session,
        job_id,
        owner,
        lease_expires=now + timedelta(seconds=lease_s),
        progress=max(0.0, min(1.0, progress)),
        message=message[:2000],
    )


def _update_owned(session: Session, job_id: str, owner: str, **values: Any) -> bool:
    """Set ``values`` on the job if this replica still runs it; commit; say whether it did."""
    count = _rows_changed(
        session, sa.update(CompressionJob).where(_owned(job_id, owner)).values(**values)
    )
    session.commit()
    return count == 1


def finish_job(
    session: Session,
    job_id: str,
    owner: str,
    now: datetime,
    *,
    sha256: str,
    size: int,
    report: dict[str, Any],
) -> bool:
    """Record the compressed model as the target version and the job as succeeded.

    One transaction: the job must still be ours, and the new version must not exist.
    Returns False (and changes nothing) if the lease was lost meanwhile.
    """
    job = session.scalar(sa.select(CompressionJob).where(_owned(job_id, owner)).with_for_update())
    if job is None:
        session.rollback()
        return False
    source = session.get(ModelVersion, job.model_version_id)
    assert source is not None
    spec = JobSpec.from_dict(job.request)
    version = ModelVersion(
        model_id=source.model_id,
        version=spec.target_version,
        runtime=source.runtime,
        sha256=sha256,
        size=size,
        filename=f"{spec.target_version}.onnx",
    )
    session.add(version)
    try:
        session.flush()
    except sa.exc.IntegrityError:
        session.rollback()
        return fail_job(
            session,
            job_id,
            owner,
            now,
            f"model version {spec.target_version!r} was created meanwhile; nothing stored",
        )
    job.state, job.progress, job.message = SUCCEEDED, 1.0, "done"
    job.result_version_id, job.report, job.finished = version.id, report, now
    job.lease_owner = None
    session.commit()
    return True


def fail_job(
    session: Session,
    job_id: str,
    owner: str,
    now: datetime,
    error: str,
    report: dict[str, Any] | None = None,
) -> bool:
    """Mark the job failed with ``error`` (and the table, when auto measured one)."""
    return _update_owned(
        session,
        job_id,
        owner,
        state=FAILED,
        error=error[:10_000],
        report=report,
        finished=now,
        lease_owner=None,
        message="failed",
    )


def report_for_version(session: Session, version_id: int) -> dict[str, Any] | None:
    """The compression report of the job that produced model version ``version_id``."""
    return session.scalar(
        sa.select(CompressionJob.report).where(
            CompressionJob.result_version_id == version_id, CompressionJob.state == SUCCEEDED
        )
    )
