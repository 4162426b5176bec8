"""Models and their versions: the ONNX / TFLite files operators hand the controller."""

from __future__ import annotations

from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from controller.blobstore import BlobStore
from controller.errors import ConflictError, NotFoundError
from controller.model_files import check_model_file, runtime_for_filename
from controller.models import Model, ModelVersion
from controller.names import check_name


def create_model(session: Session, name: str) -> Model:
    check_name(name, "model name")
    if session.scalar(sa.select(Model.id).where(Model.name == name)) is not None:
        raise ConflictError(f"model {name!r} already exists")
    model = Model(name=name, versions=[])
    session.add(model)
    try:
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()  # another request (or replica) created it meanwhile
        raise ConflictError(f"model {name!r} already exists") from None
    return model


def list_models(session: Session) -> list[Model]:
    query = sa.select(Model).options(selectinload(Model.versions)).order_by(Model.name)
    return list(session.scalars(query))


def get_model(session: Session, name: str) -> Model:
    model = session.scalar(
        sa.select(Model).options(selectinload(Model.versions)).where(Model.name == name)
    )
    if model is None:
        raise NotFoundError(f"no model named {name!r}")
    return model


def get_version(session: Session, name: str, version: str) -> ModelVersion:
    row = session.scalar(
        sa.select(ModelVersion)
        .join(Model)
        .where(Model.name == name, ModelVersion.version == version)
    )
    if row is None:
        get_model(session, name)  # a missing model is the better message
        raise NotFoundError(f"model {name!r} has no version {version!r}")
    return row


def add_version(
    session: Session,
    store: BlobStore,
    *,
    name: str,
    version: str,
    filename: str,
    source: BinaryIO,
    max_bytes: int,
) -> ModelVersion:
    """Store a model file as version ``version`` of model ``name``.

    Raises:
        NotFoundError: no such model.
        ConflictError: the version exists.
        InvalidRequestError: bad version, or the file is not the ONNX/TFLite it claims.
        PayloadTooLargeError: the file is over ``max_bytes``.
    """
    check_name(version, "model version")
    runtime = runtime_for_filename(filename)
    model = get_model(session, name)
    if any(v.version == version for v in model.versions):
        raise ConflictError(f"model {name!r} already has version {version!r}")
    with store.stage(max_bytes=max_bytes) as staged:
        staged.copy_from(source)
        staged.finish()
        check_model_file(staged.path, runtime, filename)
        digest = staged.commit()
        size = staged.size
    row = ModelVersion(
        model=model,
        version=version,
        runtime=runtime,
        sha256=digest,
        size=size,
        filename=filename.rsplit("/", 1)[-1][:255],
    )
    session.add(row)
    try:
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        raise ConflictError(f"model {name!r} already has version {version!r}") from None
    return row
