"""``/deployments``: put a bundle on devices (all at once) and follow every device."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from controller.api.deps import RuntimeDep, SessionDep
from controller.models import utcnow
from controller.schemas import (
    DeploymentCreate,
    DeploymentDetail,
    DeploymentDeviceOut,
    DeploymentOut,
)
from controller.services import deployments

router = APIRouter(prefix="/deployments", tags=["deployments"])


def _detail(session: SessionDep, deployment_id: str) -> DeploymentDetail:
    deployment, counts, rows = deployments.get_deployment(session, deployment_id)
    return DeploymentDetail(
        **DeploymentOut.of(deployment, counts).model_dump(),
        devices=[DeploymentDeviceOut.of(r) for r in rows],
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def create_deployment(
    body: DeploymentCreate, session: SessionDep, runtime: RuntimeDep
) -> DeploymentDetail:
    """Target the devices named, or every known device with the tag / hardware class."""
    deployment = deployments.create_deployment(
        session,
        runtime.publisher,
        body,
        blob_base_url=runtime.settings.blob_base_url,
        now=utcnow(),
    )
    return _detail(session, deployment.id)


@router.get("")
def list_deployments(
    session: SessionDep,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[DeploymentOut]:
    """Newest first, with device counts per status."""
    limit = min(limit, runtime.settings.max_page_size)
    rows = deployments.list_deployments(session, limit=limit, offset=offset)
    return [DeploymentOut.of(d, counts) for d, counts in rows]


@router.get("/{deployment_id}")
def get_deployment(deployment_id: str, session: SessionDep) -> DeploymentDetail:
    return _detail(session, deployment_id)
