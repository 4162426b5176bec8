"""Dependencies the routes declare: a database session and the controller's parts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from controller.blobstore import BlobStore
from controller.ingest import IngestWorker
from controller.release_keys import ReleaseKeys
from controller.services.deployments import DesiredPublisher
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
    publisher: DesiredPublisher
    broker_connected: Callable[[], bool]


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


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
