"""Captures as operators see them (create, list, look at, cancel) and each device's capture set.

Creating a capture resolves the target to devices (listed ids, a tag, a hardware class,
or a rollout's devices, optionally one wave), writes a row per device and bumps each
device's capture-set version in the same transaction. The capture worker publishes the
sets, retained, and marks them published on the broker's acknowledgement; a set is
rebuilt from these tables every time, so it is always complete. Device reports
(``up/capture``) move each device's row; only an accepted upload marks it uploaded.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from controller.capture_models import (
    ACTIVE,
    CANCELED,
    DEVICE_DONE,
    FINISHED,
    Capture,
    CaptureCommand,
    CaptureDevice,
)
from controller.capture_schemas import CaptureCreate, CaptureSpecIn
from controller.db import chunks, insert_ignoring_duplicates
from controller.errors import ConflictError, InvalidRequestError, NotFoundError
from controller.models import Bundle, Rollout, RolloutDevice
from controller.names import check_device
from controller.services.bundles import get_bundle
from controller.services.devices import devices_matching, ensure_devices
from controller.services.rollout_execution import audit
from firmware_bundles import capture_wire as cw

# ---------------------------------------------------------------- creating


def _resolve(session: Session, request: CaptureCreate) -> tuple[list[str], str | None]:
    """Target device ids, and the rollout's bundle sha256 when the target is a rollout."""
    if request.rollout is not None:
        rollout = session.get(Rollout, request.rollout[:32])
        if rollout is None:
            raise NotFoundError(f"no rollout {request.rollout[:80]!r}")
        query = sa.select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == rollout.id)
        if request.wave is not None:
            query = query.where(RolloutDevice.wave == request.wave - 1)
        devices = list(session.scalars(query.order_by(RolloutDevice.device_id)))
        if not devices:
            wave = f" wave {request.wave}" if request.wave is not None else ""
            raise InvalidRequestError(f"rollout {rollout.id}{wave} has no devices")
        return devices, rollout.bundle.manifest_sha256
    explicit = [check_device(d) for d in request.devices or []]
    matched: list[str] = []
    if request.tag is not None or request.hardware_class is not None:
        matched = devices_matching(session, tag=request.tag, hardware_class=request.hardware_class)
        if not matched and not explicit:
            raise InvalidRequestError(
                f"no known device matches tag {request.tag!r} and hardware class "
                f"{request.hardware_class!r}"
            )
    return list(dict.fromkeys(explicit + matched)), None


def create_capture(
    session: Session, request: CaptureCreate, *, actor: str, now: datetime
) -> Capture:
    """Write a capture for the target's devices and queue their capture sets.

    Raises:
        InvalidRequestError: no device matched, a bad device id, or a bad bundle reference.
        NotFoundError: no such bundle or rollout.
        ConflictError: a device already has the most captures open it can be sent.
    """
    targets, rollout_bundle = _resolve(session, request)
    bundle_ref = request.bundle or rollout_bundle
    bundle = get_bundle(session, bundle_ref) if bundle_ref is not None else None
    target: dict[str, Any] = {
        "devices": request.devices or [],
        "tag": request.tag,
        "hardware_class": request.hardware_class,
        "rollout_id": request.rollout,
        "wave": request.wave,
    }
    capture = add_capture(
        session,
        targets,
        request,
        bundle=bundle,
        target=target,
        name=request.name,
        rollout_id=request.rollout,
        actor=actor,
        now=now,
    )
    session.commit()
    return capture


def add_capture(
    session: Session,
    targets: Sequence[str],
    spec: CaptureSpecIn,
    *,
    bundle: Bundle | None,
    target: dict[str, Any],
    name: str = "",
    rollout_id: str | None = None,
    actor: str,
    now: datetime,
) -> Capture:
    """Add a capture and its device rows to the session (the caller commits)."""
    ids = sorted(set(targets))
    for part in chunks(ids):
        ensure_devices(session, list(part), now)  # locks them: sets are counted safely
    crowded = _crowded(session, ids, now)
    if crowded:
        listed = ", ".join(repr(d) for d in crowded[:10])
        raise ConflictError(
            f"device {listed} already has {cw.MAX_CAPTURES} captures open; "
            "cancel one or wait for it to finish"
        )
    capture = Capture(
        id=uuid.uuid4().hex,
        name=name,
        target=target,
        bundle_id=bundle.id if bundle is not None else None,
        rollout_id=rollout_id,
        rate=spec.rate,
        max_samples=spec.max_samples,
        expires_at=now + timedelta(seconds=spec.duration_s),
        status=ACTIVE,
        created_by=actor[:128],
        created=now,
        updated_at=now,
    )
    session.add(capture)
    session.flush()
    for part in chunks(ids):
        session.execute(
            sa.insert(CaptureDevice),
            [{"capture_id": capture.id, "device_id": d, "samples": 0, "message": ""} for d in part],
        )
    bump_capture_sets(session, ids)
    what = f"bundle {bundle.name}@{bundle.version}" if bundle is not None else "any bundle"
    audit(
        session,
        actor,
        "capture_create",
        rollout_id,
        f"capture {capture.id}: {len(ids)} devices, {what}, rate {spec.rate:g}, "
        f"up to {spec.max_samples} samples each, for {spec.duration_s:g} s",
    )
    return capture


def _crowded(session: Session, device_ids: Sequence[str], now: datetime) -> list[str]:
    counts: dict[str, int] = defaultdict(int)
    for part in chunks(list(device_ids)):
        for device_id, _capture, _sha in _set_rows(session, part, now):
            counts[device_id] += 1
    return sorted(d for d, n in counts.items() if n >= cw.MAX_CAPTURES)


def bump_capture_sets(session: Session, device_ids: Sequence[str]) -> None:
    """The capture sets of these devices changed: publish them again."""
    for part in chunks(sorted(set(device_ids))):
        session.execute(
            insert_ignoring_duplicates(session, CaptureCommand),
            [{"device_id": d, "version": 0, "published_version": 0} for d in part],
        )
        session.execute(
            sa.update(CaptureCommand)
            .where(CaptureCommand.device_id.in_(part))
            .values(version=CaptureCommand.version + 1)
        )


# ---------------------------------------------------------------- reading


def get_capture(session: Session, capture_id: str) -> Capture:
    capture = session.get(Capture, capture_id[:32])
    if capture is None:
        raise NotFoundError(f"no capture {capture_id[:80]!r}")
    return capture


def device_rows(session: Session, capture_id: str) -> list[CaptureDevice]:
    query = sa.select(CaptureDevice).where(CaptureDevice.capture_id == capture_id)
    return list(session.scalars(query.order_by(CaptureDevice.device_id)))


def summaries(
    session: Session, capture_ids: Sequence[str]
) -> dict[str, tuple[dict[str, int], int]]:
    """capture id -> (devices per status, samples uploaded)."""
    out: dict[str, tuple[dict[str, int], int]] = defaultdict(lambda: ({}, 0))
    for part in chunks(list(capture_ids)):
        query = (
            sa.select(
                CaptureDevice.capture_id,
                CaptureDevice.status,
                sa.func.count(),
                sa.func.sum(CaptureDevice.samples),
            )
            .where(CaptureDevice.capture_id.in_(part))
            .group_by(CaptureDevice.capture_id, CaptureDevice.status)
        )
        for capture_id, status, count, samples in session.execute(query):
            counts, uploaded = out[capture_id]
            counts[status] = int(count)
            if status == "uploaded":
                uploaded += int(samples or 0)
            out[capture_id] = (counts, uploaded)
    return out


def list_captures(
    session: Session,
    *,
    limit: int,
    offset: int = 0,
    status: str | None = None,
    rollout: str | None = None,
) -> list[Capture]:
    """Newest first."""
    query = sa.select(Capture).options(selectinload(Capture.bundle))
    if status is not None:
        query = query.where(Capture.status == status)
    if rollout is not None:
        query = query.where(Capture.rollout_id == rollout[:32])
    query = query.order_by(Capture.created.desc(), Capture.id).limit(limit).offset(offset)
    return list(session.scalars(query))


# ---------------------------------------------------------------- operator actions


def cancel_capture(
    session: Session, capture_id: str, *, actor: str, reason: str, now: datetime
) -> Capture:
    """Cancel: devices discard what they sampled; uploads are refused from now on.

    Raises:
        NotFoundError: no such capture.
        ConflictError: it was canceled already, or has finished.
    """
    capture = session.scalar(
        sa.select(Capture).where(Capture.id == capture_id[:32]).with_for_update()
    )
    if capture is None:
        raise NotFoundError(f"no capture {capture_id[:80]!r}")
    if capture.status != ACTIVE:
        raise ConflictError(f"cannot cancel capture {capture.id}: it is {capture.status}")
    capture.status, capture.updated_at = CANCELED, now
    open_devices = [r.device_id for r in device_rows(session, capture.id) if r.status != "uploaded"]
    bump_capture_sets(session, open_devices)
    audit(session, actor, "capture_cancel", capture.rollout_id, f"capture {capture.id}: {reason}")
    session.commit()
    return capture


# ---------------------------------------------------------------- capture sets


def _set_rows(
    session: Session, device_ids: Sequence[str], now: datetime
) -> list[tuple[str, Capture, str | None]]:
    """(device, capture, bundle sha256) for every capture in these devices' sets."""
    query = (
        sa.select(CaptureDevice.device_id, Capture, Bundle.manifest_sha256)
        .join(Capture, Capture.id == CaptureDevice.capture_id)
        .outerjoin(Bundle, Bundle.id == Capture.bundle_id)
        .where(CaptureDevice.device_id.in_(list(device_ids)))
        .where(CaptureDevice.status.not_in(DEVICE_DONE))
        .where(Capture.status.in_((ACTIVE, CANCELED)))
        .where(Capture.expires_at > now)
        .order_by(Capture.created, Capture.id)
    )
    return [(d, c, sha) for d, c, sha in session.execute(query)]


def capture_set(
    session: Session, device_id: str, *, now: datetime, api_url: str
) -> cw.CaptureCommand:
    """Everything this device is asked to capture now (its retained ``down/cmd``)."""
    requests = [
        cw.CaptureRequest(
            capture_id=capture.id,
            rate=capture.rate,
            max_samples=capture.max_samples,
            expires_at=capture.expires_at.timestamp(),
            upload_url=f"{api_url}/captures/{capture.id}/uploads/{device_id}",
            bundle_sha256=sha,
            canceled=capture.status == CANCELED,
        )
        for _, capture, sha in _set_rows(session, [device_id], now)
    ]
    return cw.CaptureCommand(tuple(requests[: cw.MAX_CAPTURES]))


def pending_sets(session: Session, *, limit: int) -> list[tuple[str, int]]:
    """(device, version) of capture sets the broker has not acknowledged."""
    query = (
        sa.select(CaptureCommand.device_id, CaptureCommand.version)
        .where(CaptureCommand.published_version < CaptureCommand.version)
        .order_by(CaptureCommand.device_id)
        .limit(limit)
    )
    return [(d, int(v)) for d, v in session.execute(query)]


def mark_published(
    session: Session, device_id: str, version: int, capture_ids: Sequence[str], when: float
) -> None:
    """The broker has version ``version`` of the device's set (listing ``capture_ids``)."""
    session.execute(
        sa.update(CaptureCommand)
        .where(CaptureCommand.device_id == device_id)
        .where(CaptureCommand.published_version < version)
        .values(published_version=version)
    )
    if capture_ids:
        session.execute(
            sa.update(CaptureDevice)
            .where(CaptureDevice.device_id == device_id)
            .where(CaptureDevice.capture_id.in_(list(capture_ids)))
            .where(CaptureDevice.notified_at.is_(None))
            .values(notified_at=when)
        )


def finish_captures(session: Session, now: datetime) -> list[str]:
    """Mark finished the active captures that expired or that every device is done with;
    their devices' sets drop them. Returns their ids (the caller commits)."""
    expired = set(
        session.scalars(
            sa.select(Capture.id).where(Capture.status == ACTIVE, Capture.expires_at <= now)
        )
    )
    open_rows = (
        sa.select(CaptureDevice.id)
        .where(CaptureDevice.capture_id == Capture.id)
        .where(CaptureDevice.status.not_in(DEVICE_DONE))
    )
    done = set(
        session.scalars(sa.select(Capture.id).where(Capture.status == ACTIVE, ~open_rows.exists()))
    )
    finished = sorted(expired | done)
    for part in chunks(finished):
        session.execute(
            sa.update(Capture)
            .where(Capture.id.in_(part), Capture.status == ACTIVE)
            .values(status=FINISHED, updated_at=now)
        )
        devices = session.scalars(
            sa.select(CaptureDevice.device_id)
            .where(CaptureDevice.capture_id.in_(part))
            .where(CaptureDevice.status.not_in(DEVICE_DONE))
        )
        bump_capture_sets(session, list(devices))
    return finished


# ---------------------------------------------------------------- device reports


def apply_capture_reports(session: Session, reports: Sequence[cw.CaptureReport]) -> None:
    """Move device rows as their reports say (called by ingest inside its transaction)."""
    finished: list[str] = []
    for report in reports:
        row = session.scalar(
            sa.select(CaptureDevice)
            .where(CaptureDevice.capture_id == report.capture_id)
            .where(CaptureDevice.device_id == report.device_id)
        )
        if row is None or row.status == "uploaded":
            continue  # not asked of it, or settled by the upload itself
        if row.reported_ts is not None and report.ts < row.reported_ts:
            continue  # older than what we have
        row.reported_ts = report.ts
        if report.status != cw.UPLOADED:  # only an accepted upload says so
            row.status = report.status
        row.samples = report.samples
        row.message = report.message
        if row.status in DEVICE_DONE:
            finished.append(row.device_id)
    if finished:
        bump_capture_sets(session, finished)
