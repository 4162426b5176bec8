"""Response bodies of the monitoring API: fleet telemetry, drift reports, drift alerts."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from controller.monitoring_models import WebhookDelivery


class BundleName(BaseModel):
    manifest_sha256: str | None
    name: str | None
    version: str | None


class TelemetryGroup(BaseModel):
    """Merged telemetry of one group (the keys asked for in ``group_by``)."""

    bundle: BundleName | None = None
    wave: int | None = None
    device_id: str | None = None
    hardware_class: str | None = None
    devices: int
    windows: int
    inference_count: int
    error_count: int
    error_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    first_window_start: float
    last_window_end: float


class TelemetrySummary(BaseModel):
    since: float
    until: float
    group_by: list[str]
    groups: list[TelemetryGroup]


class TimelineStep(BaseModel):
    start: float
    n: int
    psi: float | None
    drifted: bool | None = Field(description="None: too few samples in this step to judge")


class FeatureDriftOut(BaseModel):
    name: str
    kind: str = Field(description="input or prediction (a feature of the model's outputs)")
    n: int
    missing: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    psi: float
    jensen_shannon: float
    hellinger: float
    ks: float
    wasserstein: float | None
    chi2: float
    p_value: float
    drifted: bool
    drifting_devices: list[str]
    drifting_since: float | None
    timeline: list[TimelineStep]


class BundleDriftOut(BaseModel):
    bundle: BundleName
    devices: int
    windows: int
    drifted: bool
    drifting_devices: list[str]
    features: list[FeatureDriftOut]
    skipped: list[str]


class DriftReport(BaseModel):
    since: float
    until: float
    alpha: float
    min_samples: int
    min_psi: float
    bundles: list[BundleDriftOut]


class DriftAlertOut(BaseModel):
    id: str
    status: str
    bundle: BundleName
    model: dict[str, str | None]
    opened_at: float
    last_seen_at: float
    resolved_at: float | None
    confirmations: int
    devices: list[str]
    features: list[dict[str, Any]]
    summary: str


class DeliveryOut(BaseModel):
    id: int
    event: str
    url: str
    attempts: int
    next_attempt_at: float
    delivered_at: float | None
    gave_up_at: float | None
    last_error: str

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=row.id, event=row.event, url=row.url, attempts=row.attempts,
            next_attempt_at=row.next_attempt_at, delivered_at=row.delivered_at,
            gave_up_at=row.gave_up_at, last_error=row.last_error,
        )  # fmt: skip


class DriftAlertDetail(DriftAlertOut):
    deliveries: list[DeliveryOut]
