"""All routes under ``/api/v1``."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.routes import audit, blobs, bundles, devices, health, models, rollouts

api_router = APIRouter()
for module in (health, models, bundles, devices, rollouts, audit, blobs):
    api_router.include_router(module.router)
