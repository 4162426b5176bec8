"""Carry out the engine's decisions in the database: the IO half of a rollout tick.

:func:`apply_plan` writes a :class:`~controller.rollout_engine.TickPlan` in the caller's
transaction and returns the desired states to publish *after* the commit (a device must
never act on a decision the database does not hold). Each row it changes is written as
not yet published (``published_at`` NULL); the MQTT acknowledgement, or the device
acting on it, marks it published, and the worker re-publishes what stays unmarked (a
transactional outbox: a controller killed between commit and publish loses nothing).

The plan was made from an unlocked read, so every action is checked again against the
row once it is locked: a device that committed meanwhile is not timed out, a queued
device already canceled is not notified. Locks are taken devices first, then execution
rows, each in id order: the order ingest takes them too, so the two never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller.db import chunks
from controller.models import AuditEntry, Device, Rollout, RolloutDevice
from controller.rollout_engine import (
    CANCELED,
    FAILED,
    IN_PROGRESS,
    NOTIFIED,
    QUEUED,
    TERMINAL,
    TIMED_OUT,
    DeviceExec,
    RolloutState,
    TickPlan,
    state_after_rollback,
)
from controller.rollout_policy import RolloutPolicy
from firmware_bundles.wire import BundleRef, Desired

SUPERSEDED = "superseded"
TIMEOUT = "timeout"
ROLLOUT_ABORTED = "rollout_aborted"
ROLLOUT_ROLLED_BACK = "rollout_rolled_back"


@dataclass(frozen=True)
class Outgoing:
    """A desired state to publish once the transaction that decided it has committed."""

    row_id: int
    device_id: str
    desired: Desired


# ---------------------------------------------------------------- reading


def execution_rows(session: Session, rollout_id: str) -> list[RolloutDevice]:
    return list(
        session.scalars(
            sa.select(RolloutDevice)
            .where(RolloutDevice.rollout_id == rollout_id)
            .order_by(RolloutDevice.id)
        )
    )


def to_exec(row: RolloutDevice) -> DeviceExec:
    return DeviceExec(
        device_id=row.device_id,
        wave=row.wave,
        state=row.state,
        updated_at=row.updated_at,
        notified_at=row.notified_at,
        attempts=row.attempts,
        error_code=row.reason_code,
    )


def engine_state(rollout: Rollout) -> RolloutState:
    return RolloutState(
        status=rollout.status,  # type: ignore[arg-type]
        wave=rollout.wave,
        wave_started_at=rollout.wave_started_at,
        started_at=rollout.started_at,
        rate_tokens=rollout.rate_tokens,
        rate_updated_at=rollout.rate_updated_at,
        reason=rollout.reason,
        acknowledged=dict(rollout.acknowledged or {}),
    )


def save_state(rollout: Rollout, state: RolloutState) -> None:
    rollout.status = state.status
    rollout.reason = state.reason
    rollout.wave = state.wave
    rollout.wave_started_at = state.wave_started_at
    rollout.started_at = state.started_at
    rollout.rate_tokens = state.rate_tokens
    rollout.rate_updated_at = state.rate_updated_at
    rollout.acknowledged = dict(state.acknowledged)


def audit(session: Session, actor: str, action: str, rollout_id: str | None, detail: str) -> None:
    session.add(AuditEntry(actor=actor[:128], action=action, rollout_id=rollout_id, detail=detail))


# ---------------------------------------------------------------- desired states


def target_ref(rollout: Rollout) -> BundleRef:
    bundle = rollout.bundle
    return BundleRef(bundle.manifest_sha256, bundle.name, bundle.version)


def previous_ref(row: RolloutDevice) -> BundleRef | None:
    if row.previous_sha256 is None:
        return None
    return BundleRef(row.previous_sha256, row.previous_name or "", row.previous_version or "")


def desired_for(
    rollout: Rollout, row: RolloutDevice, generation: int, blob_base_url: str
) -> Desired | None:
    """What ``row``'s device is to run now, as the row says (None: nothing to send)."""
    if row.desired_sha256 is None:
        return None
    target = target_ref(rollout)
    if row.desired_sha256 == target.manifest_sha256:
        return Desired(generation, target, rollout.id, blob_base_url, rollout.trial)
    previous = previous_ref(row)
    if previous is None or previous.manifest_sha256 != row.desired_sha256:
        return None
    return Desired(generation, previous, rollout.id, blob_base_url)


# ---------------------------------------------------------------- writing a plan


def _lock_devices(session: Session, ids: Iterable[str]) -> dict[str, Device]:
    found: dict[str, Device] = {}
    for part in chunks(sorted(set(ids))):
        query = sa.select(Device).where(Device.id.in_(part)).order_by(Device.id)
        found.update({d.id: d for d in session.scalars(query.with_for_update())})
    return found


def _lock_rows(
    session: Session, rollout_id: str, device_ids: Sequence[str], notify: set[str]
) -> tuple[dict[str, RolloutDevice], list[RolloutDevice]]:
    """This rollout's rows for ``device_ids``, and the rows of other rollouts that the
    devices being notified are still working on (to be superseded), locked in id order."""
    mine: dict[str, RolloutDevice] = {}
    others: list[RolloutDevice] = []
    for part in chunks(sorted(set(device_ids))):
        query = (
            sa.select(RolloutDevice)
            .where(RolloutDevice.device_id.in_(part))
            .where(
                sa.or_(
                    RolloutDevice.rollout_id == rollout_id,
                    RolloutDevice.state.in_(sorted(IN_PROGRESS)),
                )
            )
            .order_by(RolloutDevice.id)
            .with_for_update()
        )
        for row in session.scalars(query):
            if row.rollout_id == rollout_id:
                mine[row.device_id] = row
            elif row.device_id in notify:
                others.append(row)
    return mine, others


def apply_plan(
    session: Session,
    rollout: Rollout,
    policy: RolloutPolicy,
    plan: TickPlan,
    *,
    now: float,
    actor: str,
    blob_base_url: str,
) -> list[Outgoing]:
    """Write ``plan`` for ``rollout`` (locked by the caller); the caller commits, then
    publishes what this returns."""
    save_state(rollout, plan.state)
    rollout.updated_at = datetime.fromtimestamp(now, timezone.utc)
    for line in plan.audit:
        audit(session, actor, "engine", rollout.id, line)
    notify = set(plan.notify) | set(plan.retry)
    touched = notify | set(plan.timed_out) | set(plan.cancel) | set(plan.roll_back)
    if not touched:
        return []
    devices = _lock_devices(session, notify | set(plan.roll_back))
    rows, superseded = _lock_rows(session, rollout.id, sorted(touched), notify)
    outgoing: list[Outgoing] = []

    for device_id in sorted(set(plan.timed_out)):
        row = rows.get(device_id)
        if row is not None and row.state in IN_PROGRESS:
            _finish(
                row,
                TIMED_OUT,
                TIMEOUT,
                f"no report of success or failure within {policy.in_progress_timeout_s:g}s "
                f"of notification (last state: {row.state})",
                now,
            )
    for device_id in sorted(set(plan.cancel)):
        row = rows.get(device_id)
        if row is not None and row.state == QUEUED:
            _finish(row, CANCELED, ROLLOUT_ABORTED, f"rollout stopped: {plan.state.reason}", now)

    target = target_ref(rollout)
    for device_id in sorted(notify):
        row, device = rows.get(device_id), devices.get(device_id)
        if row is None or device is None:
            continue
        retrying = device_id in plan.retry
        if (row.state != QUEUED) if not retrying else (row.state != FAILED):
            continue  # moved since the plan was made
        if not retrying:
            row.previous_sha256 = device.active_sha256
            row.previous_name = device.active_name
            row.previous_version = device.active_version
        row.state = NOTIFIED
        row.attempts += 1
        row.reason_code = row.reason_message = None
        row.notified_at = row.updated_at = now
        row.finished_at = None
        outgoing.append(_retarget(rollout, row, device, target.manifest_sha256, blob_base_url))
    for other in superseded:
        _finish(other, CANCELED, SUPERSEDED, f"device retargeted by rollout {rollout.id}", now)
        other.desired_sha256 = None

    reason = plan.state.reason or "rolled back by the operator"
    for device_id in sorted(set(plan.roll_back)):
        row, device = rows.get(device_id), devices.get(device_id)
        if row is None or device is None:
            continue
        if row.previous_sha256 is None:
            row.reason_message = "nothing to roll back to: the device had no model before"
            continue
        if device.rollout_id != rollout.id:
            continue  # another rollout has the device now; leave it there
        new_state = state_after_rollback(row.state)
        if new_state != row.state:
            _finish(row, new_state, ROLLOUT_ROLLED_BACK, reason, now)
        outgoing.append(_retarget(rollout, row, device, row.previous_sha256, blob_base_url))
    return outgoing


def _finish(row: RolloutDevice, state: str, code: str, message: str, now: float) -> None:
    row.state = state
    row.reason_code, row.reason_message = code, message[:2000]
    row.updated_at = now
    if state in TERMINAL:
        row.finished_at = now


def _retarget(
    rollout: Rollout, row: RolloutDevice, device: Device, sha256: str, blob_base_url: str
) -> Outgoing:
    """Point the device at ``sha256`` under this rollout with a fresh generation."""
    device.generation += 1
    device.rollout_id = rollout.id
    row.desired_sha256 = sha256
    row.published_at = None
    desired = desired_for(rollout, row, device.generation, blob_base_url)
    assert desired is not None  # the row names the target or its own previous bundle
    return Outgoing(row.id, device.id, desired)
