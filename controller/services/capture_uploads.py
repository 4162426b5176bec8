"""A device's capture upload, checked and stored once; a capture's uploads exported as one file.

An upload is refused (and nothing of it kept) unless the capture is open to it, the
device was asked, the file is a safe ``.npz`` whose arrays match the bundle's model,
and it holds no more rows than the capture allows. The same bytes sent again (a retry
whose answer was lost) get the same answer; different bytes from a device that has
uploaded already are a conflict: one file per device per capture.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller.blobstore import BlobStore, StagedBlob
from controller.capture_dataset import Upload, bundle_of, check_upload, export_columns
from controller.capture_models import CANCELED, Capture, CaptureDevice
from controller.errors import ConflictError, InvalidRequestError, NotFoundError
from controller.models import Bundle, Device, ModelVersion
from controller.names import check_device
from controller.services.captures import bump_capture_sets, get_capture
from controller.services.rollout_execution import audit
from firmware_bundles.errors import DatasetError
from firmware_bundles.manifest import manifest_from_dict
from firmware_bundles.npz_dataset import inspect_npz, write_npz


def check_uploader(session: Session, capture_id: str, device_id: str) -> None:
    """Refuse early (before the body is read) an upload that can never be accepted.

    Raises:
        NotFoundError: no such capture, or the device was not asked for it.
        ConflictError: the capture was canceled.
    """
    check_device(device_id)
    capture = get_capture(session, capture_id)
    if capture.status == CANCELED:
        raise ConflictError(f"capture {capture.id} was canceled: its samples are not wanted")
    asked = session.scalar(
        sa.select(CaptureDevice.id).where(
            CaptureDevice.capture_id == capture.id, CaptureDevice.device_id == device_id
        )
    )
    if asked is None:
        raise NotFoundError(f"device {device_id!r} was not asked for capture {capture.id}")


def _model_of(session: Session, bundle: Bundle) -> tuple[str, str]:
    """The registered model name and version a bundle was built from (else its own)."""
    if bundle.model_version_id is not None:
        version = session.get(ModelVersion, bundle.model_version_id)
        if version is not None:
            return version.model.name, version.version
    return bundle.name, bundle.version


def _check(session: Session, capture: Capture, staged: StagedBlob) -> tuple[Bundle, int]:
    """The bundle the upload's rows came from, and its row count; or DatasetError."""
    arrays = inspect_npz(staged.path)
    sha = bundle_of(staged.path, arrays)
    bundle = session.scalar(sa.select(Bundle).where(Bundle.manifest_sha256 == sha))
    if bundle is None:
        raise DatasetError(f"names bundle {sha}, which this controller does not know")
    if capture.bundle is not None and bundle.id != capture.bundle.id:
        raise DatasetError(
            f"capture {capture.id} is for bundle {capture.bundle.name}@"
            f"{capture.bundle.version}; these rows come from {bundle.name}@{bundle.version}"
        )
    rows = check_upload(
        arrays, manifest_from_dict(bundle.manifest), max_samples=capture.max_samples
    )
    return bundle, rows


def accept_upload(
    session: Session,
    staged: StagedBlob,
    *,
    capture_id: str,
    device_id: str,
    now: datetime,
) -> tuple[CaptureDevice, bool]:
    """Check ``staged`` and store it as the device's upload; True if it is new.

    Raises:
        NotFoundError / ConflictError: as :func:`check_uploader`, or a different file
            uploaded already.
        InvalidRequestError: the file is not what the capture asked for (names why).
    """
    check_uploader(session, capture_id, device_id)
    capture = get_capture(session, capture_id)
    # Lock order: device, then its rows (as ingest and capture creation take them).
    session.execute(sa.select(Device.id).where(Device.id == device_id).with_for_update())
    row = session.scalar(
        sa.select(CaptureDevice)
        .where(CaptureDevice.capture_id == capture.id, CaptureDevice.device_id == device_id)
        .with_for_update()
    )
    assert row is not None  # check_uploader found it, and rows are never deleted
    digest = staged.finish()
    if row.blob_sha256 is not None:
        if row.blob_sha256 == digest:
            return row, False  # the same file again: a retry whose answer was lost
        raise ConflictError(
            f"device {device_id!r} has uploaded {row.samples} samples for capture "
            f"{capture.id} already; a capture takes one file per device"
        )
    try:
        bundle, rows = _check(session, capture, staged)
    except DatasetError as exc:
        raise InvalidRequestError(f"capture upload from {device_id!r} refused: {exc}") from None
    staged.commit()
    model_name, model_version = _model_of(session, bundle)
    row.status, row.samples, row.message = "uploaded", rows, ""
    row.blob_sha256, row.upload_bytes, row.uploaded_at = digest, staged.size, now
    row.bundle_sha256 = bundle.manifest_sha256
    row.model_name, row.model_version = model_name[:128], model_version[:128]
    bump_capture_sets(session, [device_id])  # its set drops the capture
    session.commit()
    return row, True


def export_capture(
    session: Session,
    store: BlobStore,
    capture_id: str,
    out: Path,
    *,
    bundle: str | None,
    actor: str,
) -> int:
    """Write every upload of the capture (of one bundle, if given) to ``out``; return rows.

    Raises:
        NotFoundError: no such capture.
        ConflictError: no uploads yet, or uploads of models whose arrays do not stack.
    """
    capture = get_capture(session, capture_id)
    query = sa.select(CaptureDevice).where(
        CaptureDevice.capture_id == capture.id, CaptureDevice.blob_sha256.is_not(None)
    )
    if bundle is not None:
        query = query.where(CaptureDevice.bundle_sha256 == bundle)
    rows = list(session.scalars(query.order_by(CaptureDevice.device_id)))
    if not rows:
        of = f" from bundle {bundle[:64]}" if bundle is not None else ""
        raise ConflictError(f"capture {capture.id} has no uploads{of} yet")
    uploads = []
    for row in rows:
        assert row.blob_sha256 is not None and row.bundle_sha256 is not None
        path = store.existing_path(row.blob_sha256)
        uploads.append(
            Upload(
                path=path,
                arrays=inspect_npz(path),
                rows=row.samples,
                device_id=row.device_id,
                bundle_sha256=row.bundle_sha256,
                model_name=row.model_name or "",
                model_version=row.model_version or "",
            )
        )
    try:
        write_npz(out, export_columns(uploads), fsync=False)
    except DatasetError as exc:
        raise ConflictError(f"cannot export capture {capture.id}: {exc}") from None
    total = sum(u.rows for u in uploads)
    audit(
        session,
        actor,
        "capture_export",
        capture.rollout_id,
        f"capture {capture.id}: {total} rows from {len(uploads)} devices",
    )
    session.commit()
    return total
