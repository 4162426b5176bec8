"""Response bodies of the compression-job API (kept apart from the shared schemas module)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from controller.compression_job_model import CompressionJob
from controller.schemas import ModelVersionOut


class CompressionJobOut(BaseModel):
    id: str
    model: str
    version: str
    state: str
    progress: float
    message: str
    error: str | None
    attempts: int
    request: dict[str, Any]
    result: ModelVersionOut | None
    report: dict[str, Any] | None
    created: datetime
    started: datetime | None
    finished: datetime | None

    @classmethod
    def of(cls, row: CompressionJob) -> CompressionJobOut:
        return cls(
            id=row.id,
            model=row.source.model.name,
            version=row.source.version,
            state=row.state,
            progress=row.progress,
            message=row.message,
            error=row.error,
            attempts=row.attempts,
            request=row.request,
            result=None if row.result is None else ModelVersionOut.of(row.result),
            report=row.report,
            created=row.created,
            started=row.started,
            finished=row.finished,
        )
