"""All routes under ``/api/v1``."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.routes import (
    audit,
    blobs,
    bundles,
    captures,
    compression_jobs,
    devices,
    health,
    models,
    monitoring,
    rollouts,
)

api_router = APIRouter()
for module in (
    health, models, bundles, devices, rollouts, captures, audit, blobs, compression_jobs,
    monitoring,
):  # fmt: skip
    api_router.include_router(module.router)
