"""``/rollouts``: staged rollouts with health gates, and the operator's actions on them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy.orm import Session

from controller.api.deps import ActorDep, RuntimeDep, SessionDep
from controller.errors import InvalidRequestError
from controller.models import utcnow
from controller.rollout_engine import EXEC_STATES
from controller.rollout_schemas import (
    AuditOut,
    RolloutAction,
    RolloutCreate,
    RolloutDetail,
    RolloutDeviceOut,
    RolloutOut,
    WaveOut,
)
from controller.services import rollouts
from controller.services.rollouts import Actor

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


def _detail(session: Session, rollout_id: str) -> RolloutDetail:
    rollout = rollouts.get_rollout(session, rollout_id)
    waves = rollouts.wave_counts(session, rollout.id)
    counts: dict[str, int] = {}
    for per_wave in waves.values():
        for state, n in per_wave.items():
            counts[state] = counts.get(state, 0) + n
    return RolloutDetail(
        **RolloutOut.of(rollout, counts).model_dump(),
        policy=rollout.policy,
        trial=rollout.trial,
        waves=[WaveOut(wave=w + 1, total=sum(c.values()), counts=c) for w, c in waves.items()],
        gates=rollout.gates or {},
        lease_owner=rollout.lease_owner,
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def create_rollout(
    body: RolloutCreate, session: SessionDep, runtime: RuntimeDep, actor: ActorDep
) -> RolloutDetail:
    """Queue the bundle for the devices named, or every known device with the tag /
    hardware class, in waves or at a rate. It waits for ``start`` unless ``start: true``.
    With ``capture``, its devices also sample the new bundle's traffic (``/captures``)."""
    rollout = rollouts.create_rollout(session, body, actor=Actor(actor), now=utcnow())
    if body.capture is not None and runtime.captures is not None:
        runtime.captures.wake()
    return _detail(session, rollout.id)


@router.get("")
def list_rollouts(
    session: SessionDep,
    runtime: RuntimeDep,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[RolloutOut]:
    """Newest first, with device counts per execution state."""
    limit = min(limit, runtime.settings.max_page_size)
    rows = rollouts.list_rollouts(session, limit=limit, offset=offset, status=status)
    return [RolloutOut.of(r, counts) for r, counts in rows]


@router.get("/{rollout_id}")
def get_rollout(rollout_id: str, session: SessionDep) -> RolloutDetail:
    """Status, waves with counts per state, and the gates' latest figures."""
    return _detail(session, rollout_id)


@router.get("/{rollout_id}/devices")
def list_rollout_devices(
    rollout_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    state: str | None = None,
    wave: Annotated[int | None, Query(ge=1, description="1-based")] = None,
    limit: Annotated[int, Query(ge=1)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[RolloutDeviceOut]:
    """Each device's execution: state, reason, attempts, timestamps."""
    if state is not None and state not in EXEC_STATES:
        raise InvalidRequestError(f"state {state[:40]!r} is not one of {EXEC_STATES}")
    rows = rollouts.rollout_devices(
        session,
        rollout_id,
        state=state,
        wave=None if wave is None else wave - 1,
        limit=min(limit, runtime.settings.max_page_size),
        offset=offset,
    )
    return [RolloutDeviceOut.of(r) for r in rows]


@router.get("/{rollout_id}/audit")
def rollout_audit(
    rollout_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[AuditOut]:
    """Every action on this rollout, operators' and the engine's, oldest first."""
    rows = rollouts.audit_entries(
        session,
        rollout_id=rollout_id,
        limit=min(limit, runtime.settings.max_page_size),
        offset=offset,
    )
    return [AuditOut.of(r) for r in rows]


@router.post("/{rollout_id}/{action}")
def act(
    rollout_id: str,
    action: str,
    session: SessionDep,
    runtime: RuntimeDep,
    actor: ActorDep,
    body: RolloutAction | None = None,
) -> RolloutDetail:
    """``start`` (approve), ``pause``, ``resume``, ``abort`` (stop; devices keep what
    they have) or ``rollback`` (stop, and send every device the rollout reached back to
    its previous bundle, still in its other slot)."""
    _, outgoing = rollouts.act(
        session,
        rollout_id,
        action,
        actor=Actor(actor),
        reason=body.reason if body else "",
        now=utcnow(),
        blob_base_url=runtime.settings.blob_base_url,
    )
    runtime.rollouts.publish(outgoing)
    return _detail(session, rollout_id)
