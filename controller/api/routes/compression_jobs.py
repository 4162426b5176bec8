"""Compression jobs: ``POST /models/{name}/versions/{version}/compress`` queues one,
``GET /compression-jobs/{id}`` follows it (state, progress, error, result)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from controller.api.deps import RuntimeDep, SessionDep
from controller.compression_schemas import CompressionJobOut
from controller.errors import InvalidRequestError
from controller.services import compression_jobs as jobs

router = APIRouter(tags=["compression"])


def _options(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"field 'options' is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"field 'options' must be a JSON object, got {raw[:80]!r}")
    return value


def _upload(file: UploadFile | None) -> jobs.Upload | None:
    return None if file is None else jobs.Upload(file.filename or "", file.file)


@router.post("/models/{name}/versions/{version}/compress", status_code=status.HTTP_202_ACCEPTED)
def compress_version(
    name: str,
    version: str,
    method: Annotated[
        str, Form(description="a compress method (fp16, int8-dynamic, ...) or 'auto'")
    ],
    session: SessionDep,
    runtime: RuntimeDep,
    response: Response,
    options: Annotated[
        str,
        Form(
            description="JSON object: the method's options, or auto's constraints "
            "(max_size_ratio, max_latency_ratio, min_agreement, ...), profile, "
            "search_pruning; and runs, samples, seed, keep_float"
        ),
    ] = "{}",
    target_version: Annotated[
        str | None, Form(description="version to create; default VERSION-METHOD")
    ] = None,
    calibration: Annotated[
        UploadFile | None, File(description=".npz calibration inputs (static int8)")
    ] = None,
    evaluation: Annotated[
        UploadFile | None,
        File(description=".npz evaluation inputs (+ optional labels); default: generated"),
    ] = None,
) -> CompressionJobOut:
    """Queue a compression job; it runs in the background on some replica."""
    job = jobs.submit_job(
        session,
        runtime.store,
        name=name,
        version=version,
        method=method,
        options=_options(options),
        target_version=target_version,
        calibration=_upload(calibration),
        evaluation=_upload(evaluation),
        max_upload_bytes=runtime.settings.max_upload_bytes,
        max_queued=runtime.settings.compression_max_queued,
    )
    response.headers["Location"] = f"/api/v1/compression-jobs/{job.id}"
    return CompressionJobOut.of(job)


@router.get("/compression-jobs/{job_id}")
def get_job(job_id: str, session: SessionDep) -> CompressionJobOut:
    return CompressionJobOut.of(jobs.get_job(session, job_id))


@router.get("/compression-jobs")
def list_jobs(
    session: SessionDep,
    model: Annotated[str | None, Query(description="model name")] = None,
) -> list[CompressionJobOut]:
    return [CompressionJobOut.of(j) for j in jobs.list_jobs(session, model)]
