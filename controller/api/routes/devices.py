"""``/devices``: what the controller knows about each device, its telemetry and events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from controller.api.deps import SessionDep, SettingsDep
from controller.errors import InvalidRequestError
from controller.models import utcnow
from controller.schemas import DeviceDetail, DeviceOut, EventOut, TelemetryOut
from controller.services import devices
from controller.settings import Settings

router = APIRouter(prefix="/devices", tags=["devices"])

Limit = Annotated[int | None, Query(ge=1, description="at most EDGEFLEET_MAX_PAGE_SIZE")]


def _limit(value: int | None, settings: Settings, default: int | None = None) -> int:
    if value is None:
        return min(default or settings.max_page_size, settings.max_page_size)
    if value > settings.max_page_size:
        raise InvalidRequestError(
            f"limit {value} is over EDGEFLEET_MAX_PAGE_SIZE ({settings.max_page_size})"
        )
    return value


@router.get("")
def list_devices(
    session: SessionDep,
    settings: SettingsDep,
    tag: str | None = None,
    hardware_class: str | None = None,
    online: bool | None = None,
    limit: Limit = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[DeviceOut]:
    now = utcnow()
    rows = devices.list_devices(
        session,
        now=now,
        offline_after_s=settings.offline_after_s,
        tag=tag,
        hardware_class=hardware_class,
        online=online,
        limit=_limit(limit, settings),
        offset=offset,
    )
    return [DeviceOut.of(d, now, settings.offline_after_s) for d in rows]


@router.get("/{device_id}")
def get_device(device_id: str, session: SessionDep, settings: SettingsDep) -> DeviceDetail:
    device = devices.get_device(session, device_id)
    window = devices.latest_telemetry(session, device_id)
    return DeviceDetail(
        **DeviceOut.of(device, utcnow(), settings.offline_after_s).model_dump(),
        last_telemetry=None if window is None else TelemetryOut.of(window),
    )


@router.get("/{device_id}/telemetry")
def get_telemetry(
    device_id: str, session: SessionDep, settings: SettingsDep, limit: Limit = None
) -> list[TelemetryOut]:
    """The newest ``limit`` (default 100) telemetry windows, oldest first."""
    rows = devices.telemetry(session, device_id, limit=_limit(limit, settings, 100))
    return [TelemetryOut.of(w) for w in rows]


@router.get("/{device_id}/events")
def get_events(
    device_id: str, session: SessionDep, settings: SettingsDep, limit: Limit = None
) -> list[EventOut]:
    """The newest ``limit`` (default 100) events, oldest first."""
    rows = devices.events(session, device_id, limit=_limit(limit, settings, 100))
    return [EventOut.of(e) for e in rows]
