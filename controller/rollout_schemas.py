"""Request and response bodies of ``/rollouts`` and ``/audit`` (pydantic).

The request model validates what an operator asks for and builds the engine's
:class:`~controller.rollout_policy.RolloutPolicy`; anything the engine could not act on
(no steps, a threshold outside 0..1, two strategies at once) is a 422 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller import models as m
from controller.capture_schemas import CaptureSpecIn
from controller.rollout_engine import EXEC_STATES
from controller.rollout_policy import (
    GATE_KINDS,
    AbortCriterion,
    ExponentialRate,
    GateKind,
    RolloutPolicy,
    Waves,
    WaveStep,
)
from controller.schemas import ErrorOut, TrialIn


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WaveStepIn(_In):
    """A cumulative share of the target in percent, or a cumulative device count."""

    percent: float | None = Field(None, gt=0, le=100)
    count: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> WaveStepIn:
        if (self.percent is None) == (self.count is None):
            raise ValueError("a wave step gives exactly one of 'percent' or 'count'")
        return self


class WavesIn(_In):
    steps: list[WaveStepIn] = Field(min_length=1, max_length=100)
    min_devices: int = Field(1, ge=1, description="smallest wave, in devices")
    soak_s: float = Field(0.0, ge=0, description="wait after a wave finishes before the next")
    success_threshold: float = Field(
        1.0, ge=0, le=1, description="share of a wave committed before the next starts"
    )


class ExponentialRateIn(_In):
    base_per_minute: float = Field(gt=0)
    increment_factor: float = Field(2.0, ge=1)
    increase_every: int = Field(10, ge=1, description="devices between rate increases")
    increase_on: Literal["notified", "succeeded"] = "notified"


class AbortIn(_In):
    kind: GateKind = Field(description=f"one of {', '.join(GATE_KINDS)}")
    threshold: float = Field(ge=0, description="share (0..1), error rate, or latency ratio")
    min_finished: int = Field(1, ge=1, description="samples needed before it may fire")
    action: Literal["pause", "abort"] = "pause"

    @model_validator(mode="after")
    def _share(self) -> AbortIn:
        if self.kind != "latency_ratio" and self.threshold > 1:
            raise ValueError(f"{self.kind} threshold is a share: 0..1, got {self.threshold}")
        return self


class RolloutCreate(_In):
    bundle: str = Field(description="bundle id or manifest_sha256")
    name: str = Field("", max_length=128)
    devices: list[str] | None = Field(None, description="device ids (unknown ones are created)")
    tag: str | None = Field(None, description="every known device carrying this tag")
    hardware_class: str | None = Field(None, description="every known device of this class")
    waves: WavesIn | None = Field(None, description="waves; default: one wave of 100%")
    exponential_rate: ExponentialRateIn | None = None
    abort: list[AbortIn] = Field(default_factory=list, max_length=20)
    in_progress_timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(2, ge=0, le=20)
    retry_backoff_s: float = Field(5.0, ge=0)
    trial: TrialIn | None = Field(None, description="trial policy override for this rollout")
    start: bool = Field(False, description="start at once instead of waiting for approval")
    capture: CaptureSpecIn | None = Field(
        None, description="capture samples from the devices once they run the new bundle"
    )

    @model_validator(mode="after")
    def _one_strategy(self) -> RolloutCreate:
        if self.waves is not None and self.exponential_rate is not None:
            raise ValueError("give 'waves' or 'exponential_rate', not both")
        return self

    def to_policy(self) -> RolloutPolicy:
        strategy: Waves | ExponentialRate
        if self.exponential_rate is not None:
            strategy = ExponentialRate(**self.exponential_rate.model_dump())
        else:
            waves = self.waves or WavesIn.model_validate({"steps": [{"percent": 100}]})
            strategy = Waves(
                steps=tuple(WaveStep(s.percent, s.count) for s in waves.steps),
                min_devices=waves.min_devices,
                soak_s=waves.soak_s,
                success_threshold=waves.success_threshold,
            )
        return RolloutPolicy(
            strategy=strategy,
            abort=tuple(AbortCriterion(**a.model_dump()) for a in self.abort),
            in_progress_timeout_s=self.in_progress_timeout_s,
            max_retries=self.max_retries,
            retry_backoff_s=self.retry_backoff_s,
        )


class RolloutAction(_In):
    reason: str = Field("", max_length=500, description="why, for the audit log")


# ---------------------------------------------------------------- responses


class RolloutBundleOut(BaseModel):
    id: int
    manifest_sha256: str
    name: str
    version: str


class WaveOut(BaseModel):
    wave: int  # 1-based, as operators count
    total: int
    counts: dict[str, int]


class RolloutOut(BaseModel):
    id: str
    name: str
    bundle: RolloutBundleOut
    target: dict[str, Any]
    status: str
    reason: str
    current_wave: int | None  # 1-based; None before the start
    total: int
    counts: dict[str, int]
    created: datetime
    created_by: str

    @classmethod
    def of(cls, row: m.Rollout, counts: dict[str, int]) -> RolloutOut:
        full = {state: counts.get(state, 0) for state in EXEC_STATES}
        return cls(
            id=row.id,
            name=row.name,
            bundle=RolloutBundleOut(
                id=row.bundle.id,
                manifest_sha256=row.bundle.manifest_sha256,
                name=row.bundle.name,
                version=row.bundle.version,
            ),
            target=row.target,
            status=row.status,
            reason=row.reason,
            current_wave=row.wave + 1 if row.wave >= 0 else None,
            total=sum(full.values()),
            counts=full,
            created=row.created,
            created_by=row.created_by,
        )


class RolloutDetail(RolloutOut):
    policy: dict[str, Any]
    trial: dict[str, Any] | None
    waves: list[WaveOut]
    gates: dict[str, Any]
    lease_owner: str | None


class RolloutDeviceOut(BaseModel):
    device_id: str
    wave: int  # 1-based
    state: str
    attempts: int
    reason: ErrorOut | None
    previous_sha256: str | None
    notified_at: float | None
    finished_at: float | None
    updated_at: float

    @classmethod
    def of(cls, row: m.RolloutDevice) -> RolloutDeviceOut:
        reason = None
        if row.reason_code is not None:
            reason = ErrorOut(code=row.reason_code, message=row.reason_message or "")
        return cls(
            device_id=row.device_id,
            wave=row.wave + 1,
            state=row.state,
            attempts=row.attempts,
            reason=reason,
            previous_sha256=row.previous_sha256,
            notified_at=row.notified_at,
            finished_at=row.finished_at,
            updated_at=row.updated_at,
        )


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    rollout_id: str | None
    detail: str

    @classmethod
    def of(cls, row: m.AuditEntry) -> AuditOut:
        return cls(
            id=row.id,
            at=row.at,
            actor=row.actor,
            action=row.action,
            rollout_id=row.rollout_id,
            detail=row.detail,
        )
