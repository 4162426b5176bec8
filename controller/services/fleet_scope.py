"""Which devices a monitoring query is about: ids, a tag, a hardware class, a rollout wave.

Filters combine (a device must pass each one given); none given means the whole fleet.
Tags and hardware classes are the devices' current ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller.errors import InvalidRequestError, NotFoundError
from controller.models import Rollout, RolloutDevice
from controller.names import check_device
from controller.services.devices import devices_matching


@dataclass(frozen=True)
class Scope:
    devices: tuple[str, ...] = ()
    tag: str | None = None
    hardware_class: str | None = None
    rollout: str | None = None
    wave: int | None = None  # 1 is the first wave, as ``rollout status`` numbers them

    @property
    def whole_fleet(self) -> bool:
        return not self.devices and self.tag is None and self.hardware_class is None and (
            self.rollout is None
        )  # fmt: skip


@dataclass(frozen=True)
class Resolved:
    """The devices in scope (None: every device) and, for a rollout, each one's wave
    (numbered from 1)."""

    devices: list[str] | None
    waves: dict[str, int]
    rollout: Rollout | None = None


def resolve_scope(session: Session, scope: Scope) -> Resolved:
    """The devices ``scope`` selects.

    Raises:
        InvalidRequestError: a malformed device id, or a wave without a rollout.
        NotFoundError: no such rollout.
    """
    if scope.wave is not None and scope.rollout is None:
        raise InvalidRequestError("'wave' needs 'rollout': waves belong to a rollout")
    explicit = [check_device(d) for d in scope.devices]
    rollout, waves = None, {}
    if scope.rollout is not None:
        rollout = session.get(Rollout, scope.rollout[:32])
        if rollout is None:
            raise NotFoundError(f"no rollout {scope.rollout!r}")
        query = sa.select(RolloutDevice.device_id, RolloutDevice.wave).where(
            RolloutDevice.rollout_id == rollout.id
        )
        if scope.wave is not None:
            query = query.where(RolloutDevice.wave == scope.wave - 1)
        waves = {device: wave + 1 for device, wave in session.execute(query).all()}
    if scope.whole_fleet:
        return Resolved(None, waves, rollout)
    candidates: Sequence[str] | None = None
    if explicit:
        candidates = explicit
    if rollout is not None:
        candidates = [d for d in (candidates or waves) if d in waves]
    if scope.tag is not None or scope.hardware_class is not None:
        matched = set(devices_matching(session, tag=scope.tag, hardware_class=scope.hardware_class))
        candidates = [
            d for d in (candidates if candidates is not None else matched) if d in matched
        ]
    return Resolved(sorted(set(candidates or ())), waves, rollout)
