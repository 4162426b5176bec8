"""``GET /health``: database, broker and ingest at a glance; and the release public key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from controller.api.deps import RuntimeDep
from controller.db import check_database
from controller.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut)
def health(runtime: RuntimeDep) -> JSONResponse:
    """``status`` is ``ok`` when the database answers (503 otherwise)."""
    db = check_database(runtime.engine)
    body = HealthOut(
        status="ok" if db == "ok" else "degraded",
        db=db,
        broker_connected=runtime.broker_connected(),
        ingest=runtime.ingest.snapshot(),
    )
    return JSONResponse(body.model_dump(), status_code=200 if db == "ok" else 503)


@router.get("/keys/release.pub", response_class=PlainTextResponse)
def release_public_key(runtime: RuntimeDep) -> PlainTextResponse:
    """The PEM public key of the release key: what devices must trust for built bundles."""
    return PlainTextResponse(
        runtime.keys.public_path.read_text(), media_type="application/x-pem-file"
    )
