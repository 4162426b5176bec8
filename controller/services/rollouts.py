"""Rollouts as operators see them: create, look at, start, pause, resume, abort, roll back.

Creating one resolves the target to devices, assigns them to waves (a stable
pseudo-random order per rollout) and writes one execution row per device, all queued;
nothing is published until the rollout runs. Every operator action locks the rollout
row (waiting for a tick in progress), changes it through the engine's rules, writes
an audit entry naming who, and commits; desired states it decides (an abort that rolls
devices back) are returned for the caller to publish after the commit.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from controller.db import chunks
from controller.errors import ConflictError, InvalidRequestError, NotFoundError
from controller.models import AuditEntry, Rollout, RolloutDevice
from controller.names import check_device
from controller.rollout_engine import QUEUED, assign_waves, plan_abort, resume
from controller.rollout_policy import policy_from_dict, policy_to_dict
from controller.rollout_schemas import RolloutCreate
from controller.services.bundles import get_bundle
from controller.services.captures import add_capture
from controller.services.devices import devices_matching, ensure_devices
from controller.services.rollout_execution import (
    Outgoing,
    apply_plan,
    audit,
    engine_state,
    execution_rows,
    save_state,
    to_exec,
)
from controller.services.rollout_gates import metrics_from_dict

ACTIONS = ("start", "pause", "resume", "abort", "rollback")


@dataclass(frozen=True)
class Actor:
    """Who asks: an operator (from the API) or a controller replica."""

    name: str


def _resolve_targets(session: Session, request: RolloutCreate) -> list[str]:
    explicit = list(dict.fromkeys(check_device(d) for d in request.devices or []))
    matched: list[str] = []
    if request.tag is not None or request.hardware_class is not None:
        matched = devices_matching(session, tag=request.tag, hardware_class=request.hardware_class)
        if not matched and not explicit:
            wanted = " and ".join(
                f"{key} {value!r}"
                for key, value in (("tag", request.tag), ("hardware class", request.hardware_class))
                if value is not None
            )
            raise InvalidRequestError(f"no known device matches {wanted}")
    return list(dict.fromkeys(explicit + matched))


def create_rollout(
    session: Session, request: RolloutCreate, *, actor: Actor, now: datetime
) -> Rollout:
    """Write a rollout with every target device queued in its wave; start it if asked.

    Raises:
        InvalidRequestError: no target given or matched, a bad device id, an expired
            bundle, or devices whose hardware class the bundle does not support.
        NotFoundError: no such bundle.
    """
    if not request.devices and request.tag is None and request.hardware_class is None:
        raise InvalidRequestError(
            "a rollout needs a target: give 'devices', 'tag' or 'hardware_class'"
        )
    bundle = get_bundle(session, request.bundle)
    if bundle.expires <= now:
        raise InvalidRequestError(
            f"bundle {bundle.name}@{bundle.version} expired at {bundle.expires.isoformat()}"
        )
    policy = request.to_policy()
    targets = _resolve_targets(session, request)
    devices = ensure_devices(session, sorted(targets), now)
    wrong = [
        d
        for d in devices.values()
        if d.hardware_class and d.hardware_class not in bundle.hardware_classes
    ]
    if wrong:
        listed = ", ".join(f"{d.id!r} is {d.hardware_class!r}" for d in wrong[:10])
        more = f" and {len(wrong) - 10} more" if len(wrong) > 10 else ""
        session.rollback()
        raise InvalidRequestError(
            f"bundle {bundle.name}@{bundle.version} supports hardware classes "
            f"{list(bundle.hardware_classes)}; device {listed}{more}"
        )
    rollout = Rollout(
        id=uuid.uuid4().hex,
        name=request.name,
        bundle=bundle,
        target={
            "devices": request.devices or [],
            "tag": request.tag,
            "hardware_class": request.hardware_class,
        },
        policy=policy_to_dict(policy),
        trial=request.trial.to_policy() if request.trial else None,
        status="created",
        created_by=actor.name[:128],
        created=now,
        updated_at=now,
    )
    session.add(rollout)
    session.flush()
    clock = now.timestamp()
    for part in chunks(assign_waves(rollout.id, targets, policy)):
        session.execute(
            sa.insert(RolloutDevice),
            [
                {
                    "rollout_id": rollout.id,
                    "device_id": e.device_id,
                    "wave": e.wave,
                    "state": QUEUED,
                    "attempts": 0,
                    "updated_at": clock,
                }
                for e in part
            ],
        )
    audit(
        session,
        actor.name,
        "create",
        rollout.id,
        f"bundle {bundle.name}@{bundle.version} to {len(targets)} devices",
    )
    if request.capture is not None:
        # Restricted to the new bundle: a device samples once it runs it.
        add_capture(session, targets, request.capture, bundle=bundle,
                    target={"rollout_id": rollout.id}, rollout_id=rollout.id,
                    actor=actor.name, now=now)  # fmt: skip
    if request.start:
        rollout.status = "running"
        audit(session, actor.name, "start", rollout.id, "started on creation")
    session.commit()
    return rollout


# ---------------------------------------------------------------- reading


def get_rollout(session: Session, rollout_id: str) -> Rollout:
    rollout = session.get(Rollout, rollout_id[:32])
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id[:80]!r}")
    return rollout


def state_counts(session: Session, rollout_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for part in chunks(list(rollout_ids)):
        query = (
            sa.select(RolloutDevice.rollout_id, RolloutDevice.state, sa.func.count())
            .where(RolloutDevice.rollout_id.in_(part))
            .group_by(RolloutDevice.rollout_id, RolloutDevice.state)
        )
        for rollout_id, state, count in session.execute(query):
            counts[rollout_id][state] = int(count)
    return counts


def wave_counts(session: Session, rollout_id: str) -> dict[int, dict[str, int]]:
    """wave -> state -> devices."""
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    query = (
        sa.select(RolloutDevice.wave, RolloutDevice.state, sa.func.count())
        .where(RolloutDevice.rollout_id == rollout_id)
        .group_by(RolloutDevice.wave, RolloutDevice.state)
    )
    for wave, state, count in session.execute(query):
        counts[int(wave)][state] = int(count)
    return dict(sorted(counts.items()))


def list_rollouts(
    session: Session, *, limit: int, offset: int = 0, status: str | None = None
) -> list[tuple[Rollout, dict[str, int]]]:
    """Newest first, each with its per-state device counts."""
    query = sa.select(Rollout).options(selectinload(Rollout.bundle))
    if status is not None:
        query = query.where(Rollout.status == status)
    rows = list(
        session.scalars(
            query.order_by(Rollout.created.desc(), Rollout.id).limit(limit).offset(offset)
        )
    )
    counts = state_counts(session, [r.id for r in rows])
    return [(r, counts.get(r.id, {})) for r in rows]


def rollout_devices(
    session: Session,
    rollout_id: str,
    *,
    state: str | None,
    wave: int | None,
    limit: int,
    offset: int,
) -> list[RolloutDevice]:
    get_rollout(session, rollout_id)
    query = sa.select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
    if state is not None:
        query = query.where(RolloutDevice.state == state)
    if wave is not None:
        query = query.where(RolloutDevice.wave == wave)
    return list(
        session.scalars(query.order_by(RolloutDevice.device_id).limit(limit).offset(offset))
    )


def audit_entries(
    session: Session, *, rollout_id: str | None, limit: int, offset: int
) -> list[AuditEntry]:
    """Oldest first."""
    query = sa.select(AuditEntry)
    if rollout_id is not None:
        get_rollout(session, rollout_id)
        query = query.where(AuditEntry.rollout_id == rollout_id)
    return list(session.scalars(query.order_by(AuditEntry.id).limit(limit).offset(offset)))


# ---------------------------------------------------------------- operator actions

_ALLOWED = {
    "start": ("created",),
    "pause": ("running",),
    "resume": ("paused",),
    "abort": ("created", "running", "paused"),
    "rollback": ("created", "running", "paused", "completed", "aborted"),
}


def act(
    session: Session,
    rollout_id: str,
    action: str,
    *,
    actor: Actor,
    reason: str,
    now: datetime,
    blob_base_url: str,
) -> tuple[Rollout, list[Outgoing]]:
    """Carry out an operator action; returns the rollout and desired states to publish.

    Raises:
        NotFoundError: no such rollout.
        ConflictError: the action does not apply in the rollout's status.
    """
    if action not in _ALLOWED:
        raise InvalidRequestError(f"unknown action {action!r}: one of {ACTIONS}")
    found = session.scalar(
        sa.select(Rollout).where(Rollout.id == rollout_id[:32]).with_for_update()
    )
    if found is None:
        raise NotFoundError(f"no rollout {rollout_id[:80]!r}")
    rollout = found
    if rollout.status not in _ALLOWED[action]:
        raise ConflictError(
            f"cannot {action} rollout {rollout.id}: it is {rollout.status} "
            f"({action} applies to {' or '.join(_ALLOWED[action])} rollouts)"
        )
    policy = policy_from_dict(rollout.policy)
    state = engine_state(rollout)
    said = f": {reason}" if reason else ""
    outgoing: list[Outgoing] = []
    clock = now.timestamp()
    if action == "start":
        rollout.status = "running"
    elif action == "pause":
        rollout.status, rollout.reason = "paused", f"paused by {actor.name}{said}"
    elif action == "resume":
        devices = [to_exec(r) for r in execution_rows(session, rollout.id)]
        save_state(rollout, resume(policy, state, devices, metrics_from_dict(rollout.gates)))
    else:
        devices = [to_exec(r) for r in execution_rows(session, rollout.id)]
        verb = "aborted" if action == "abort" else "rolled back"
        plan = plan_abort(
            state, devices, f"{verb} by {actor.name}{said}", roll_back=action == "rollback"
        )
        if action == "rollback":
            plan = replace(plan, state=replace(plan.state, status="rolled_back"))
        plan = replace(plan, audit=())
        outgoing = apply_plan(
            session,
            rollout,
            policy,
            plan,
            now=clock,
            actor=actor.name,
            blob_base_url=blob_base_url,
        )
    rollout.updated_at = now
    audit(session, actor.name, action, rollout.id, reason)
    session.commit()
    return rollout, outgoing
