"""``/captures``: samples of devices' inputs and outputs, uploaded and exported for retraining."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from controller.api.deps import ActorDep, Runtime, RuntimeDep, SessionDep
from controller.blobstore import StagedBlob, check_sha256
from controller.capture_models import CAPTURE_STATUSES
from controller.capture_schemas import (
    CaptureAction,
    CaptureCreate,
    CaptureDetail,
    CaptureDeviceOut,
    CaptureOut,
)
from controller.errors import InvalidRequestError, PayloadTooLargeError
from controller.models import utcnow
from controller.services import capture_uploads, captures

router = APIRouter(prefix="/captures", tags=["captures"])


def _detail(session: Session, capture_id: str) -> CaptureDetail:
    capture = captures.get_capture(session, capture_id)
    counts, uploaded = captures.summaries(session, [capture.id]).get(capture.id, ({}, 0))
    rows = captures.device_rows(session, capture.id)
    return CaptureDetail(
        **CaptureOut.of(capture, counts, uploaded).model_dump(),
        devices=[CaptureDeviceOut.of(r) for r in rows],
    )


def _wake(runtime: Runtime) -> None:
    if runtime.captures is not None:
        runtime.captures.wake()


@router.post("", status_code=status.HTTP_201_CREATED)
def create_capture(
    body: CaptureCreate, session: SessionDep, runtime: RuntimeDep, actor: ActorDep
) -> CaptureDetail:
    """Ask the target's devices to sample ``rate`` of their inferences, up to
    ``max_samples`` rows each, for ``duration_s``; each uploads one ``.npz``."""
    capture = captures.create_capture(session, body, actor=actor, now=utcnow())
    _wake(runtime)
    return _detail(session, capture.id)


@router.get("")
def list_captures(
    session: SessionDep,
    runtime: RuntimeDep,
    status: str | None = None,
    rollout: str | None = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[CaptureOut]:
    """Newest first, with device counts per status; ``rollout`` narrows to one rollout's."""
    if status is not None and status not in CAPTURE_STATUSES:
        raise InvalidRequestError(f"status {status[:40]!r} is not one of {CAPTURE_STATUSES}")
    rows = captures.list_captures(
        session,
        limit=min(limit, runtime.settings.max_page_size),
        offset=offset,
        status=status,
        rollout=rollout,
    )
    counts = captures.summaries(session, [r.id for r in rows])
    return [CaptureOut.of(r, *counts.get(r.id, ({}, 0))) for r in rows]


@router.get("/{capture_id}")
def get_capture(capture_id: str, session: SessionDep) -> CaptureDetail:
    """Status, and each device's progress: notified, samples, uploaded (with model version)."""
    return _detail(session, capture_id)


@router.post("/{capture_id}/cancel")
def cancel_capture(
    capture_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    actor: ActorDep,
    body: CaptureAction | None = None,
) -> CaptureDetail:
    """Stop it: devices discard what they sampled, and uploads are refused."""
    captures.cancel_capture(
        session, capture_id, actor=actor, reason=body.reason if body else "", now=utcnow()
    )
    _wake(runtime)
    return _detail(session, capture_id)


@router.post("/{capture_id}/uploads/{device_id}")
async def upload(
    capture_id: str, device_id: str, request: Request, runtime: RuntimeDep, response: Response
) -> CaptureDeviceOut:
    """A device's samples: the body is an uncompressed ``.npz`` (``np.savez``) with
    ``input/<name>`` and ``output/<name>`` per model tensor, ``timestamp`` per row and
    ``bundle_sha256``. 201 when stored, 200 when the same file was stored before."""
    limit = runtime.settings.capture_max_upload_bytes
    await run_in_threadpool(_check, runtime, capture_id, device_id)  # before reading a byte
    with runtime.store.stage(max_bytes=limit) as staged:
        async for chunk in request.stream():
            if staged.size + len(chunk) > limit:
                raise PayloadTooLargeError(
                    f"capture upload is over EDGEFLEET_CAPTURE_MAX_UPLOAD_BYTES ({limit} bytes)"
                )
            staged.write(chunk)
        row, created = await run_in_threadpool(_accept, runtime, staged, capture_id, device_id)
    if created:
        _wake(runtime)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return row


def _check(runtime: Runtime, capture_id: str, device_id: str) -> None:
    with runtime.sessions() as session:
        capture_uploads.check_uploader(session, capture_id, device_id)


def _accept(
    runtime: Runtime, staged: StagedBlob, capture_id: str, device_id: str
) -> tuple[CaptureDeviceOut, bool]:
    with runtime.sessions() as session:
        row, created = capture_uploads.accept_upload(
            session, staged, capture_id=capture_id, device_id=device_id, now=utcnow()
        )
        return CaptureDeviceOut.of(row), created


@router.get("/{capture_id}/export", response_class=FileResponse)
def export(
    capture_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    actor: ActorDep,
    bundle: Annotated[str | None, Query(description="only rows of this bundle")] = None,
) -> FileResponse:
    """One ``.npz``: every input and output array concatenated over the uploads, with
    ``timestamp``, ``device_id``, ``bundle_sha256``, ``model_name`` and ``model_version``
    per row (never pickled: ``np.load(path)`` reads it)."""
    if bundle is not None:
        check_sha256(bundle)
    out = runtime.settings.data_dir / "exports" / f"{uuid.uuid4().hex}.npz"
    captures.get_capture(session, capture_id)
    try:
        capture_uploads.export_capture(
            session, runtime.store, capture_id, out, bundle=bundle, actor=actor
        )
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return FileResponse(
        out,
        media_type="application/octet-stream",
        filename=f"capture-{capture_id[:32]}.npz",
        background=BackgroundTask(out.unlink, missing_ok=True),
    )
