"""Devices as the controller last heard from them, with their telemetry and events."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller.db import insert_ignoring_duplicates
from controller.errors import NotFoundError
from controller.models import Device, DeviceEvent, TelemetryWindow
from controller.names import check_device


def ensure_devices(session: Session, ids: list[str], now: datetime) -> dict[str, Device]:
    """Load and lock the devices (in id order, the order every writer takes), creating
    the ones never seen before (another replica may be creating them too)."""

    def lock(some: list[str]) -> dict[str, Device]:
        query = sa.select(Device).where(Device.id.in_(some)).order_by(Device.id)
        return {d.id: d for d in session.scalars(query.with_for_update())}

    found = lock(ids)
    missing = [i for i in ids if i not in found]
    if missing:
        session.execute(
            insert_ignoring_duplicates(session, Device),
            [
                {"id": i, "tags": [], "online": False, "generation": 0, "created": now}
                for i in missing
            ],
        )
        found.update(lock(missing))
    return found


def devices_matching(
    session: Session, *, tag: str | None = None, hardware_class: str | None = None
) -> list[str]:
    """Ids of the known devices with ``tag`` and of ``hardware_class`` (each if given),
    in id order. Tags are a JSON list: portable filtering happens here, not in SQL."""
    query = sa.select(Device.id, Device.tags).order_by(Device.id)
    if hardware_class is not None:
        query = query.where(Device.hardware_class == hardware_class)
    return [
        device_id
        for device_id, tags in session.execute(query)
        if tag is None or tag in (tags or [])
    ]


def list_devices(
    session: Session,
    *,
    now: datetime,
    offline_after_s: float,
    tag: str | None = None,
    hardware_class: str | None = None,
    online: bool | None = None,
    limit: int,
    offset: int = 0,
) -> list[Device]:
    """Devices matching every filter given, ordered by id."""
    query = sa.select(Device).order_by(Device.id)
    if hardware_class is not None:
        query = query.where(Device.hardware_class == hardware_class)
    fresh = Device.last_seen >= now - timedelta(seconds=offline_after_s)
    if online is True:
        query = query.where(Device.online.is_(True), fresh)
    elif online is False:
        query = query.where(sa.or_(Device.online.is_(False), Device.last_seen.is_(None), ~fresh))
    if tag is None:
        return list(session.scalars(query.limit(limit).offset(offset)))
    # Tags are a JSON list: portable filtering happens here, not in dialect-specific SQL.
    matching = [d for d in session.scalars(query) if tag in (d.tags or [])]
    return matching[offset : offset + limit]


def get_device(session: Session, device_id: str) -> Device:
    check_device(device_id)
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    return device


def latest_telemetry(session: Session, device_id: str) -> TelemetryWindow | None:
    return session.scalar(
        sa.select(TelemetryWindow)
        .where(TelemetryWindow.device_id == device_id)
        .order_by(TelemetryWindow.window_end.desc(), TelemetryWindow.id.desc())
        .limit(1)
    )


def telemetry(session: Session, device_id: str, *, limit: int) -> list[TelemetryWindow]:
    """The device's newest ``limit`` telemetry windows, oldest first."""
    get_device(session, device_id)
    rows = session.scalars(
        sa.select(TelemetryWindow)
        .where(TelemetryWindow.device_id == device_id)
        .order_by(TelemetryWindow.window_end.desc(), TelemetryWindow.id.desc())
        .limit(limit)
    )
    return list(reversed(list(rows)))


def events(session: Session, device_id: str, *, limit: int) -> list[DeviceEvent]:
    """The device's newest ``limit`` events, oldest first."""
    get_device(session, device_id)
    rows = session.scalars(
        sa.select(DeviceEvent)
        .where(DeviceEvent.device_id == device_id)
        .order_by(DeviceEvent.ts.desc(), DeviceEvent.id.desc())
        .limit(limit)
    )
    return list(reversed(list(rows)))
