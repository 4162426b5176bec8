"""``/blobs/{sha256}``: blob bytes (models, golden data, signed envelopes) for devices.

Starlette's ``FileResponse`` answers ``Range: bytes=N-`` / ``bytes=N-M`` with 206 and
``Content-Range`` (416 when unsatisfiable), which is what lets an agent resume a download.
Blobs never change, so the sha256 is the ETag and caches may keep them forever.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from controller.api.deps import StoreDep
from controller.blobstore import check_sha256

router = APIRouter(prefix="/blobs", tags=["blobs"])


RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/octet-stream": {}}},
    206: {"description": "the requested byte range"},
    404: {"description": "no such blob"},
    416: {"description": "range not satisfiable"},
}


@router.head(
    "/{sha256}", response_class=FileResponse, responses=RESPONSES, operation_id="head_blob"
)
@router.get("/{sha256}", response_class=FileResponse, responses=RESPONSES, operation_id="get_blob")
def get_blob(sha256: str, store: StoreDep) -> FileResponse:
    path = store.existing_path(check_sha256(sha256))
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={
            "ETag": f'"{sha256}"',
            "Cache-Control": "public, max-age=31536000, immutable",
        },
    )
