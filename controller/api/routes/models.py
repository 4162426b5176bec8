"""``/models``: register models and upload their versions (ONNX or TFLite files)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from controller.api.deps import SessionDep, SettingsDep, StoreDep
from controller.schemas import DriftReferenceOut, ModelCreate, ModelOut, ModelVersionOut
from controller.services import model_registry, reference_data
from firmware_bundles.drift_reference import ExtractorConfig

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_model(body: ModelCreate, session: SessionDep) -> ModelOut:
    return ModelOut.of(model_registry.create_model(session, body.name))


@router.get("")
def list_models(session: SessionDep) -> list[ModelOut]:
    return [ModelOut.of(m) for m in model_registry.list_models(session)]


@router.get("/{name}")
def get_model(name: str, session: SessionDep) -> ModelOut:
    return ModelOut.of(model_registry.get_model(session, name))


@router.post("/{name}/versions", status_code=status.HTTP_201_CREATED)
def add_version(
    name: str,
    file: Annotated[UploadFile, File(description="the .onnx or .tflite model file")],
    version: Annotated[str, Form(description="version label, e.g. 1.0.0")],
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
) -> ModelVersionOut:
    row = model_registry.add_version(
        session,
        store,
        name=name,
        version=version,
        filename=file.filename or "",
        source=file.file,
        max_bytes=settings.max_upload_bytes,
    )
    return ModelVersionOut.of(row)


@router.get("/{name}/versions")
def list_versions(name: str, session: SessionDep) -> list[ModelVersionOut]:
    return [ModelVersionOut.of(v) for v in model_registry.get_model(session, name).versions]


@router.put("/{name}/versions/{version}/drift-reference")
def set_drift_reference(
    name: str,
    version: str,
    file: Annotated[UploadFile, File(description="an .npz of model inputs (reference data)")],
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    bins: Annotated[int, Form(ge=2, le=100, description="quantile bins per feature")] = 10,
    max_columns: Annotated[
        int, Form(ge=1, le=4096, description="wider [N, F] inputs get mean/std summaries")
    ] = 64,
    max_categories: Annotated[
        int, Form(ge=0, le=1000, description="integer features with a vocabulary")
    ] = 20,
) -> DriftReferenceOut:
    """Attach reference data (usually the calibration or a training sample) to a model
    version: every bundle built from it afterwards ships drift bins computed from it."""
    row = reference_data.set_reference(
        session, store, name=name, version=version, source=file.file,
        max_bytes=settings.max_upload_bytes,
        config=ExtractorConfig(max_columns=max_columns, max_categories=max_categories, bins=bins),
    )  # fmt: skip
    return DriftReferenceOut(sha256=row.sha256, rows=row.rows, features=row.features)
