"""Dependencies the routes declare: a database session and the controller's parts."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.blobstore import BlobStore
from controller.capture_worker import CaptureWorker
from controller.drift_references import DriftReferences
from controller.errors import InvalidRequestError
from controller.ingest import IngestWorker
from controller.monitoring_worker import MonitoringWorker
from controller.release_keys import ReleaseKeys
from controller.rollout_worker import RolloutWorker
from controller.settings import Settings


@dataclass(frozen=True)
class Runtime:
    """Everything one app instance owns; built by ``create_app``, kept on ``app.state``."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    keys: ReleaseKeys
    ingest: IngestWorker
    rollouts: RolloutWorker
    references: DriftReferences
    monitoring: MonitoringWorker
    broker_connected: Callable[[], bool]
    captures: CaptureWorker | None = None


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.sessions() as session:
        yield session


def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


def get_store(runtime: RuntimeDep) -> BlobStore:
    return runtime.store


ACTOR_HEADER = "X-EdgeFleet-Actor"
_ACTOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._:+-]{0,99}$")


def get_actor(
    actor: Annotated[
        str | None,
        Header(
            alias=ACTOR_HEADER,
            description="who is acting, for the audit log (an operator's name)",
        ),
    ] = None,
) -> str:
    """The operator named in ``X-EdgeFleet-Actor``; "anonymous" when none is given.

    The API has no authentication yet: this names, it does not prove.
    """
    if actor is None or not actor.strip():
        return "anonymous"
    if not _ACTOR_RE.match(actor.strip()):
        raise InvalidRequestError(
            f"{ACTOR_HEADER} {actor[:110]!r}: use 1-100 of letters, digits and @._:+-"
        )
    return actor.strip()


SessionDep = Annotated[Session, Depends(get_session)]
ActorDep = Annotated[str, Depends(get_actor)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
