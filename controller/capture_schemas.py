"""Request and response bodies of ``/captures`` (pydantic)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.capture_models import DEVICE_STATUSES, Capture, CaptureDevice
from firmware_bundles.capture_wire import MAX_SAMPLES

MAX_DURATION_S = 90 * 86400.0


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaptureSpecIn(_In):
    """How much to capture: the share of inferences, the rows per device, for how long."""

    rate: float = Field(gt=0, le=1, description="share of inferences sampled (0..1]")
    max_samples: int = Field(ge=1, le=MAX_SAMPLES, description="rows per device at most")
    duration_s: float = Field(gt=0, le=MAX_DURATION_S, description="from now until it expires")


class CaptureCreate(CaptureSpecIn):
    name: str = Field("", max_length=128)
    devices: list[str] | None = Field(None, max_length=100_000, description="device ids")
    tag: str | None = Field(None, description="every known device carrying this tag")
    hardware_class: str | None = Field(None, description="every known device of this class")
    rollout: str | None = Field(None, description="the devices of this rollout")
    wave: int | None = Field(None, ge=1, description="only this wave of the rollout (1-based)")
    bundle: str | None = Field(
        None,
        description="sample only while serving this bundle (id or manifest sha256); "
        "default: the rollout's bundle with 'rollout', else any bundle",
    )

    @model_validator(mode="after")
    def _one_target(self) -> CaptureCreate:
        listed = bool(self.devices) or self.tag is not None or self.hardware_class is not None
        if self.rollout is not None and listed:
            raise ValueError("give 'rollout' or devices/tag/hardware_class, not both")
        if self.rollout is None and not listed:
            raise ValueError(
                "a capture needs a target: 'devices', 'tag', 'hardware_class' or 'rollout'"
            )
        if self.wave is not None and self.rollout is None:
            raise ValueError("'wave' narrows a 'rollout' target; give the rollout too")
        return self


class CaptureAction(_In):
    reason: str = Field("", max_length=500, description="why, for the audit log")


# ---------------------------------------------------------------- responses


class CaptureBundleOut(BaseModel):
    id: int
    manifest_sha256: str
    name: str
    version: str


class CaptureUploadOut(BaseModel):
    blob_sha256: str
    bytes: int
    bundle_sha256: str
    model_name: str
    model_version: str
    uploaded_at: datetime


class CaptureDeviceOut(BaseModel):
    device_id: str
    status: str  # one of DEVICE_STATUSES
    samples: int
    message: str
    notified: bool  # the broker holds a capture set asking for it
    upload: CaptureUploadOut | None

    @classmethod
    def of(cls, row: CaptureDevice) -> CaptureDeviceOut:
        upload = None
        if row.blob_sha256 is not None and row.uploaded_at is not None:
            upload = CaptureUploadOut(
                blob_sha256=row.blob_sha256,
                bytes=row.upload_bytes or 0,
                bundle_sha256=row.bundle_sha256 or "",
                model_name=row.model_name or "",
                model_version=row.model_version or "",
                uploaded_at=row.uploaded_at,
            )
        return cls(
            device_id=row.device_id,
            status=row.status,
            samples=row.samples,
            message=row.message,
            notified=row.notified_at is not None,
            upload=upload,
        )


class CaptureOut(BaseModel):
    id: str
    name: str
    status: str
    target: dict[str, Any]
    bundle: CaptureBundleOut | None
    rollout_id: str | None
    rate: float
    max_samples: int
    expires_at: datetime
    created: datetime
    created_by: str
    total: int  # devices asked
    counts: dict[str, int]  # devices per status
    samples_uploaded: int

    @classmethod
    def of(cls, row: Capture, counts: dict[str, int], samples_uploaded: int) -> CaptureOut:
        bundle = None
        if row.bundle is not None:
            bundle = CaptureBundleOut(
                id=row.bundle.id,
                manifest_sha256=row.bundle.manifest_sha256,
                name=row.bundle.name,
                version=row.bundle.version,
            )
        full = {status: counts.get(status, 0) for status in DEVICE_STATUSES}
        return cls(
            id=row.id,
            name=row.name,
            status=row.status,
            target=row.target,
            bundle=bundle,
            rollout_id=row.rollout_id,
            rate=row.rate,
            max_samples=row.max_samples,
            expires_at=row.expires_at,
            created=row.created,
            created_by=row.created_by,
            total=sum(full.values()),
            counts=full,
            samples_uploaded=samples_uploaded,
        )


class CaptureDetail(CaptureOut):
    devices: list[CaptureDeviceOut]
