"""``/bundles``: build and sign on the controller, or upload a bundle signed elsewhere."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile, status

from controller.api.deps import RuntimeDep, SessionDep
from controller.errors import InvalidRequestError
from controller.models import utcnow
from controller.schemas import BundleCreate, BundleDetail, BundleOut
from controller.services import bundles
from firmware_bundles.dsse import MAX_ENVELOPE_BYTES

router = APIRouter(prefix="/bundles", tags=["bundles"])


@router.post("", status_code=status.HTTP_201_CREATED)
def build_bundle(body: BundleCreate, session: SessionDep, runtime: RuntimeDep) -> BundleDetail:
    """Build a bundle from a registered model version and sign it with the release key."""
    row = bundles.build_bundle(
        session,
        runtime.store,
        runtime.keys,
        body,
        now=utcnow(),
        valid_for=timedelta(days=runtime.settings.bundle_valid_days),
    )
    return BundleDetail.of(row)


@router.post("/upload", status_code=status.HTTP_201_CREATED)
def upload_bundle(
    manifest: Annotated[UploadFile, File(description="the signed DSSE envelope")],
    session: SessionDep,
    runtime: RuntimeDep,
    files: Annotated[list[UploadFile] | None, File(description="the blobs it names")] = None,
) -> BundleDetail:
    """Accept a bundle signed by a trusted key (``EDGEFLEET_TRUSTED_KEYS``) and its blobs."""
    envelope = manifest.file.read(MAX_ENVELOPE_BYTES + 1)
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise InvalidRequestError(
            f"manifest {manifest.filename!r} is over the {MAX_ENVELOPE_BYTES}-byte envelope limit"
        )
    row = bundles.upload_bundle(
        session,
        runtime.store,
        runtime.keys,
        envelope=envelope,
        files=[(f.filename or "", f.file) for f in files or []],
        max_bytes=runtime.settings.max_upload_bytes,
        now=utcnow(),
    )
    return BundleDetail.of(row)


@router.get("")
def list_bundles(
    session: SessionDep, name: Annotated[str | None, Query(description="bundle name")] = None
) -> list[BundleOut]:
    return [BundleOut.of(b) for b in bundles.list_bundles(session, name)]


@router.get("/{ref}")
def get_bundle(ref: str, session: SessionDep) -> BundleDetail:
    """A bundle by id or manifest sha256, with its manifest."""
    return BundleDetail.of(bundles.get_bundle(session, ref))
