"""``/telemetry/summary``, ``/drift`` and ``/drift/alerts``: the fleet's health over time.

Every query takes the same scope (``device`` (repeatable), ``tag``, ``hardware_class``,
``rollout`` and ``wave``: filters that combine) and time range (``since``/``until`` in
epoch seconds; without ``since``, the last ``window_s`` seconds before ``until``).
"""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from controller.api.deps import RuntimeDep, SessionDep, SettingsDep
from controller.errors import InvalidRequestError
from controller.monitoring_schemas import (
    DeliveryOut,
    DriftAlertDetail,
    DriftAlertOut,
    DriftReport,
    TelemetrySummary,
)
from controller.services import drift_alerts, fleet_telemetry
from controller.services.bundles import get_bundle
from controller.services.drift_report import Judge, drift_report
from controller.services.fleet_scope import Scope
from controller.settings import Settings

router = APIRouter(tags=["monitoring"])

Devices = Annotated[list[str] | None, Query(description="device id; repeat for several")]
Wave = Annotated[int | None, Query(ge=1, description="a wave of 'rollout', from 1")]
Since = Annotated[float | None, Query(description="epoch seconds; default until - window_s")]
Until = Annotated[float | None, Query(description="epoch seconds; default now")]
Window = Annotated[float, Query(gt=0, description="seconds before 'until' when no 'since'")]
BundleRef = Annotated[str | None, Query(description="bundle id or manifest sha256")]


def _range(
    since: float | None, until: float | None, window_s: float, settings: Settings
) -> tuple[float, float]:
    end = time.time() if until is None else until
    start = end - window_s if since is None else since
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        raise InvalidRequestError(f"'since' and 'until' must be epoch seconds, got {start}, {end}")
    if not end > start:
        raise InvalidRequestError(f"'until' ({end}) must be after 'since' ({start})")
    # Nothing older than the retention is kept: a longer range only costs a scan.
    longest = settings.monitoring.telemetry_retention_s + settings.monitoring.telemetry_bucket_s
    if end - start > longest:
        raise InvalidRequestError(
            f"the range is {end - start:.0f} s; at most {longest:.0f} s (the retention) is kept"
        )
    return start, end


def _bundle_sha(session: Session, ref: str | None) -> str | None:
    return None if ref is None else get_bundle(session, ref).manifest_sha256


@router.get("/telemetry/summary")
def telemetry_summary(
    session: SessionDep,
    settings: SettingsDep,
    device: Devices = None,
    tag: str | None = None,
    hardware_class: str | None = None,
    rollout: str | None = None,
    wave: Wave = None,
    bundle: BundleRef = None,
    group_by: Annotated[
        list[str] | None, Query(description="bundle (default), wave, device, hardware_class")
    ] = None,
    since: Since = None,
    until: Until = None,
    window_s: Window = 3600.0,
) -> TelemetrySummary:
    """Inferences, errors, error rate and latency p50/p95/p99 merged over the devices and
    the time range, one row per group: per bundle version by default; add ``wave`` (with
    ``rollout``) for a rollout's waves."""
    start, end = _range(since, until, window_s, settings)
    groups = group_by or ["bundle"]
    rows = fleet_telemetry.summarize(
        session,
        Scope(tuple(device or ()), tag, hardware_class, rollout, wave),
        since=start,
        until=end,
        bundle=_bundle_sha(session, bundle),
        group_by=groups,
    )
    return TelemetrySummary.model_validate(
        {"since": start, "until": end, "group_by": groups, "groups": rows}
    )


@router.get("/drift")
def drift(
    session: SessionDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    device: Devices = None,
    tag: str | None = None,
    hardware_class: str | None = None,
    rollout: str | None = None,
    wave: Wave = None,
    bundle: BundleRef = None,
    since: Since = None,
    until: Until = None,
    window_s: Window = 3600.0,
    steps: Annotated[int, Query(ge=1, le=200, description="timeline steps")] = 12,
) -> DriftReport:
    """Drift of each bundle's inputs and predictions on the devices and time range chosen,
    against the bundle's reference: figures per feature, which devices drift, since when.
    With ``rollout`` the bundle defaults to the rollout's."""
    start, end = _range(since, until, window_s, settings)
    monitoring = settings.monitoring
    bundles = drift_report(
        session,
        runtime.references,
        Scope(tuple(device or ()), tag, hardware_class, rollout, wave),
        since=start,
        until=end,
        bundle=_bundle_sha(session, bundle),
        steps=steps,
        judge=Judge(monitoring.drift_alpha, monitoring.drift_min_samples, monitoring.drift_min_psi),
    )
    return DriftReport.model_validate({
        "since": start, "until": end, "alpha": monitoring.drift_alpha,
        "min_samples": monitoring.drift_min_samples, "min_psi": monitoring.drift_min_psi,
        "bundles": bundles,
    })  # fmt: skip


@router.get("/drift/alerts")
def list_alerts(
    session: SessionDep,
    status: Annotated[str | None, Query(description="pending, open, resolved, dismissed")] = None,
    bundle: BundleRef = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DriftAlertOut]:
    """Drift alerts, newest first."""
    rows = drift_alerts.list_alerts(
        session, status=status, bundle=_bundle_sha(session, bundle), limit=limit
    )
    return [DriftAlertOut.model_validate(drift_alerts.alert_to_dict(r)) for r in rows]


@router.get("/drift/alerts/{alert_id}")
def get_alert(alert_id: str, session: SessionDep) -> DriftAlertDetail:
    """One alert with its webhook deliveries (attempts, last error)."""
    row, deliveries = drift_alerts.get_alert(session, alert_id)
    return DriftAlertDetail(
        **drift_alerts.alert_to_dict(row), deliveries=[DeliveryOut.of(d) for d in deliveries]
    )
