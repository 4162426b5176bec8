"""``/audit``: who did what, when: operators' actions and the rollout engine's steps."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controller.api.deps import RuntimeDep, SessionDep
from controller.rollout_schemas import AuditOut
from controller.services import rollouts

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def list_audit(
    session: SessionDep,
    runtime: RuntimeDep,
    rollout: str | None = None,
    limit: Annotated[int, Query(ge=1)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[AuditOut]:
    """Oldest first; ``rollout`` narrows it to one rollout."""
    rows = rollouts.audit_entries(
        session,
        rollout_id=rollout,
        limit=min(limit, runtime.settings.max_page_size),
        offset=offset,
    )
    return [AuditOut.of(r) for r in rows]
