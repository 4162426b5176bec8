"""All routes under ``/api/v1``."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.routes import (
    blobs,
    bundles,
    compression_jobs,
    deployments,
    devices,
    health,
    models,
)

api_router = APIRouter()
for module in (health, models, bundles, devices, deployments, blobs, compression_jobs):
    api_router.include_router(module.router)
