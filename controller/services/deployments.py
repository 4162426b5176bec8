"""Deployments: put a bundle on a set of devices, all at once, and follow each device.

Creating one writes everything to the database first (the deployment, one row per
device, each device's next desired generation) and commits; only then is each device's
desired state published (retained, QoS 1). The database is the truth: a device that
was offline reads its retained desired state when it connects.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from controller.db import insert_ignoring_duplicates
from controller.errors import InvalidRequestError, NotFoundError
from controller.models import (
    OPEN_STATUSES,
    PENDING,
    SUPERSEDED,
    Deployment,
    DeploymentDevice,
    Device,
)
from controller.names import check_device
from controller.schemas import DeploymentCreate
from controller.services.bundles import get_bundle
from firmware_bundles.wire import BundleRef, Desired

log = logging.getLogger(__name__)

T = TypeVar("T")
IN_CHUNK = 1000  # ids per IN (...) list: well under SQLite's bound-parameter limit


class DesiredPublisher(Protocol):
    def publish_desired(self, device_id: str, desired: Desired) -> None: ...


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _resolve_targets(session: Session, request: DeploymentCreate) -> list[str]:
    explicit = list(dict.fromkeys(check_device(d) for d in request.devices or []))
    matched: list[str] = []
    if request.tag is not None or request.hardware_class is not None:
        query = sa.select(Device.id, Device.tags).order_by(Device.id)
        if request.hardware_class is not None:
            query = query.where(Device.hardware_class == request.hardware_class)
        matched = [
            device_id
            for device_id, tags in session.execute(query)
            if request.tag is None or request.tag in (tags or [])
        ]
        if not matched and not explicit:
            wanted = " and ".join(
                f"{key} {value!r}"
                for key, value in (("tag", request.tag), ("hardware class", request.hardware_class))
                if value is not None
            )
            raise InvalidRequestError(f"no known device matches {wanted}")
    return list(dict.fromkeys(explicit + matched))


def _lock_devices(session: Session, device_ids: list[str], now: datetime) -> list[Device]:
    """Load (creating unknown ids as never-seen devices) and lock the target devices."""
    for part in chunks(sorted(device_ids)):
        session.execute(
            insert_ignoring_duplicates(session, Device),
            [{"id": d, "tags": [], "online": False, "generation": 0, "created": now} for d in part],
        )
    devices: list[Device] = []
    for part in chunks(sorted(device_ids)):
        query = sa.select(Device).where(Device.id.in_(part)).order_by(Device.id)
        devices.extend(session.scalars(query.with_for_update()))
    return devices


def create_deployment(
    session: Session,
    publisher: DesiredPublisher,
    request: DeploymentCreate,
    *,
    blob_base_url: str,
    now: datetime,
) -> Deployment:
    """Target every resolved device with the bundle and publish their desired states.

    Raises:
        InvalidRequestError: no target given or matched, a bad device id, an expired
            bundle, or devices whose hardware class the bundle does not support.
        NotFoundError: no such bundle.
    """
    if not request.devices and request.tag is None and request.hardware_class is None:
        raise InvalidRequestError(
            "a deployment needs a target: give 'devices', 'tag' or 'hardware_class'"
        )
    bundle = get_bundle(session, request.bundle)
    if bundle.expires <= now:
        raise InvalidRequestError(
            f"bundle {bundle.name}@{bundle.version} expired at {bundle.expires.isoformat()}"
        )
    targets = _resolve_targets(session, request)
    devices = _lock_devices(session, targets, now)
    wrong = [
        d for d in devices if d.hardware_class and d.hardware_class not in bundle.hardware_classes
    ]
    if wrong:
        listed = ", ".join(f"{d.id!r} is {d.hardware_class!r}" for d in wrong[:10])
        more = f" and {len(wrong) - 10} more" if len(wrong) > 10 else ""
        session.rollback()
        raise InvalidRequestError(
            f"bundle {bundle.name}@{bundle.version} supports hardware classes "
            f"{list(bundle.hardware_classes)}; device {listed}{more}"
        )
    trial = request.trial.to_policy() if request.trial else None
    deployment = Deployment(
        id=uuid.uuid4().hex,
        bundle=bundle,
        target={
            "devices": request.devices or [],
            "tag": request.tag,
            "hardware_class": request.hardware_class,
        },
        trial=trial,
        created=now,
    )
    session.add(deployment)
    for part in chunks([d.id for d in devices]):
        session.execute(
            sa.update(DeploymentDevice)
            .where(DeploymentDevice.device_id.in_(part))
            .where(DeploymentDevice.status.in_(OPEN_STATUSES))
            .values(
                status=SUPERSEDED,
                reason_code="superseded",
                reason_message=f"device retargeted by deployment {deployment.id}",
                updated_at=now,
            )
        )
    for device in devices:
        device.generation += 1
        device.deployment_id = deployment.id
        session.add(
            DeploymentDevice(
                deployment_id=deployment.id, device_id=device.id, status=PENDING, updated_at=now
            )
        )
    session.commit()
    ref = BundleRef(bundle.manifest_sha256, bundle.name, bundle.version)
    for device in devices:
        desired = Desired(
            generation=device.generation,
            bundle=ref,
            deployment_id=deployment.id,
            blob_base_url=blob_base_url,
            trial=trial,
        )
        try:
            publisher.publish_desired(device.id, desired)
        except Exception:  # the row is committed; the device reconciles on the next deploy
            log.exception("%s: cannot publish desired state", device.id)
    return deployment


def status_counts(session: Session, deployment_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for part in chunks(list(deployment_ids)):
        query = (
            sa.select(DeploymentDevice.deployment_id, DeploymentDevice.status, sa.func.count())
            .where(DeploymentDevice.deployment_id.in_(part))
            .group_by(DeploymentDevice.deployment_id, DeploymentDevice.status)
        )
        for deployment_id, status, count in session.execute(query):
            counts[deployment_id][status] = int(count)
    return counts


def list_deployments(
    session: Session, *, limit: int, offset: int = 0
) -> list[tuple[Deployment, dict[str, int]]]:
    """Newest first, each with its per-status device counts."""
    rows = list(
        session.scalars(
            sa.select(Deployment)
            .options(selectinload(Deployment.bundle))
            .order_by(Deployment.created.desc(), Deployment.id)
            .limit(limit)
            .offset(offset)
        )
    )
    counts = status_counts(session, [d.id for d in rows])
    return [(d, counts.get(d.id, {})) for d in rows]


def get_deployment(
    session: Session, deployment_id: str
) -> tuple[Deployment, dict[str, int], list[DeploymentDevice]]:
    deployment = session.get(Deployment, deployment_id[:64])
    if deployment is None:
        raise NotFoundError(f"no deployment {deployment_id[:80]!r}")
    devices = list(
        session.scalars(
            sa.select(DeploymentDevice)
            .where(DeploymentDevice.deployment_id == deployment.id)
            .order_by(DeploymentDevice.device_id)
        )
    )
    counts: dict[str, int] = defaultdict(int)
    for row in devices:
        counts[row.status] += 1
    return deployment, dict(counts), devices
