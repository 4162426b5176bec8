"""The periodic drift check and its alerts (rows), with webhook deliveries to send.

:func:`run_drift_check` tests the last ``drift_window_s`` of every bundle's drift
windows (see :mod:`controller.drift_watch` for the decision), records what drifts as
an alert naming the bundle, the model version it was built from, the devices and the
feature figures, and queues one webhook delivery per URL for each event an operator
or a retraining pipeline should hear of (opened, updated, resolved).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller import drift_watch as dw
from controller import window_merge as wm
from controller.drift_references import DriftReferences, Reference, is_prediction
from controller.drift_stats import FeatureBins, detect_drift, feature_figures
from controller.errors import InvalidRequestError, NotFoundError
from controller.models import Model, ModelVersion
from controller.monitoring_models import DriftAlert, WebhookDelivery
from controller.monitoring_settings import MonitoringSettings
from controller.services.window_store import Query, drift_bundles, drift_parts

log = logging.getLogger(__name__)
SINCE_STEPS = 6  # steps of the check window in which a new drift's start is placed
STATUSES = (dw.PENDING, dw.OPEN, dw.RESOLVED, dw.DISMISSED)


@dataclass(frozen=True)
class CheckSummary:
    bundles: int = 0
    alerts_changed: int = 0
    events: int = 0


def _onset(
    steps: dw.Merger, bins: dict[str, FeatureBins], feature: str, devices: Sequence[str],
    since: float, step_s: float, *, alpha: float, min_samples: int, min_psi: float,
) -> float:  # fmt: skip
    """When ``feature`` started drifting on ``devices`` within the check window."""
    chosen = {feature: bins[feature]}
    verdicts = []
    for index in range(SINCE_STEPS):
        parts = [steps.merged[(d, index)][feature] for d in devices
                 if feature in steps.merged.get((d, index), {})]  # fmt: skip
        verdict = None
        if parts:
            counts = wm.merge_features({feature: p} for p in parts)[feature]["counts"]
            [row] = detect_drift(chosen, {feature: counts}, alpha=alpha,
                                 min_samples=min_samples, min_psi=min_psi)  # fmt: skip
            verdict = row.drifted if row.n >= min_samples else None
        verdicts.append((since + index * step_s, verdict))
    started = dw.onset(verdicts)
    return since if started is None else started


def _found_features(
    ref: Reference, finding: dw.Finding, whole: dw.Merger, steps: dw.Merger, since: float,
    settings: MonitoringSettings,
) -> list[dw.AlertFeature]:  # fmt: skip
    bins = ref.bins()
    found = []
    for name, devices in finding.drifting.items():
        merged = wm.merge_features({name: whole.merged[d][name]} for d in devices)[name]
        figures = feature_figures(name, bins[name], merged["counts"], drifted=True)
        since_at = _onset(
            steps, bins, name, devices, since, settings.drift_window_s / SINCE_STEPS,
            alpha=settings.drift_alpha, min_samples=settings.drift_min_samples,
            min_psi=settings.drift_min_psi,
        )  # fmt: skip
        data = {**asdict(figures), "kind": "prediction" if is_prediction(name) else "input"}
        found.append(dw.AlertFeature(name, tuple(devices), since_at, data))
    return found


def _state_of(row: DriftAlert) -> dw.AlertState:
    return dw.AlertState(
        status=row.status,
        opened_at=row.opened_at,
        last_seen_at=row.last_seen_at,
        confirmations=row.confirmations,
        quiet_checks=row.quiet_checks,
        resolved_at=row.resolved_at,
        features=tuple(
            dw.AlertFeature(
                f["name"],
                tuple(f["devices"]),
                f["since"],
                {k: v for k, v in f.items() if k not in ("name", "devices", "since")},
            )  # fmt: skip
            for f in row.features
        ),
    )


def _model_of(session: Session, ref: Reference) -> tuple[str, str]:
    if ref.model_version_id is None:
        return "", ""
    found = session.execute(
        sa.select(Model.name, ModelVersion.version)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.id == ref.model_version_id)
    ).first()
    return (found[0], found[1]) if found else ("", "")


def _write(row: DriftAlert, state: dw.AlertState) -> None:
    row.status = state.status
    row.opened_at = state.opened_at
    row.last_seen_at = state.last_seen_at
    row.confirmations = state.confirmations
    row.quiet_checks = state.quiet_checks
    row.resolved_at = state.resolved_at
    row.devices = list(state.devices)
    row.features = [
        {"name": f.name, "devices": list(f.devices), "since": f.since, **f.figures}
        for f in state.features
    ]
    row.summary = summarize(state)


def summarize(state: dw.AlertState) -> str:
    if not state.features:
        return ""
    parts = [
        f"{f.name} on {len(f.devices)} device(s) since {_clock(f.since)} "
        f"(PSI {f.figures.get('psi', 0.0):.3f})"
        for f in state.features[:5]
    ]
    more = f" and {len(state.features) - 5} more" if len(state.features) > 5 else ""
    return "drift: " + "; ".join(parts) + more


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def alert_to_dict(row: DriftAlert) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "bundle": {
            "manifest_sha256": row.bundle_sha256,
            "name": row.bundle_name,
            "version": row.bundle_version,
        },
        "model": {"name": row.model_name or None, "version": row.model_version or None},
        "opened_at": row.opened_at,
        "last_seen_at": row.last_seen_at,
        "resolved_at": row.resolved_at,
        "confirmations": row.confirmations,
        "devices": list(row.devices),
        "features": list(row.features),
        "summary": row.summary,
    }


def _queue_deliveries(
    session: Session, row: DriftAlert, event: str, settings: MonitoringSettings, now: float
) -> int:
    for url in settings.alert_webhooks:
        delivery = WebhookDelivery(
            alert_id=row.id, event=event, url=url, attempts=0, next_attempt_at=now,
            payload={"event": event, "at": now, "alert": alert_to_dict(row)},
        )  # fmt: skip
        session.add(delivery)
    return len(settings.alert_webhooks)


def check_bundle(
    session: Session, ref: Reference, settings: MonitoringSettings, now: float
) -> tuple[bool, int]:
    """Check one bundle; (alert changed, events queued). The caller commits."""
    since = now - settings.drift_window_s
    row = session.scalar(
        sa.select(DriftAlert)
        .where(DriftAlert.bundle_sha256 == ref.bundle_sha256, DriftAlert.status.in_(dw.ACTIVE))
        .order_by(DriftAlert.opened_at.desc())
        .limit(1)
        .with_for_update()
    )
    fresh_after = row.last_seen_at if row is not None and row.status == dw.PENDING else None
    # One pass over the window, summed per device, per device and step (for onsets),
    # and per device over what is new since a pending alert was last seen.
    bins = ref.bins()
    whole, steps, fresh = dw.Merger(bins), dw.Merger(bins), dw.Merger(bins)
    step_s = settings.drift_window_s / SINCE_STEPS
    query = Query(bundle=ref.bundle_sha256, since=since, until=now)
    for part in drift_parts(session, query):
        whole.add(part.device_id, part.features)
        index = dw.step_of(part.last_end, since, step_s, SINCE_STEPS)
        steps.add((part.device_id, index), part.features, part.device_id)
        if fresh_after is not None and part.last_end > fresh_after:
            fresh.add(part.device_id, part.features)
    for problem in whole.problems[:5]:
        log.warning("drift check of %s@%s skipped %s", ref.bundle_name, ref.bundle_version,
                    problem)  # fmt: skip
    judge = {"alpha": settings.drift_alpha, "min_psi": settings.drift_min_psi}
    min_samples = settings.drift_min_samples
    finding = dw.find_drift(bins, whole.merged, min_samples=min_samples, **judge)
    found = _found_features(ref, finding, whole, steps, since, settings)
    fresh_finding = None
    if fresh_after is not None:
        fresh_finding = dw.find_drift(bins, fresh.merged, min_samples=min_samples, **judge)
    before = None if row is None else _state_of(row)
    policy = dw.AlertPolicy(settings.drift_confirmations, settings.drift_resolve_after)
    state, event = dw.step_alert(before, finding, found, now, policy, fresh_finding)
    if state is None or state == before:
        return False, 0
    if row is None:
        model_name, model_version = _model_of(session, ref)
        row = DriftAlert(
            id=uuid.uuid4().hex, bundle_sha256=ref.bundle_sha256, bundle_name=ref.bundle_name,
            bundle_version=ref.bundle_version, model_name=model_name,
            model_version=model_version,
        )  # fmt: skip
        session.add(row)
    _write(row, state)
    if event is not None:
        session.flush()
        log.warning("drift alert %s %s: %s@%s: %s", row.id, event.rsplit(".", 1)[-1],
                    row.bundle_name, row.bundle_version, row.summary)  # fmt: skip
        return True, _queue_deliveries(session, row, event, settings, now)
    return True, 0


def run_drift_check(
    sessions: Callable[[], Session],
    references: DriftReferences,
    settings: MonitoringSettings,
    now: float,
    keep_going: Callable[[], bool] = lambda: True,
) -> CheckSummary:
    """Check every bundle that sent drift windows in the check window, each in a
    transaction of its own (a bundle whose check fails is logged; the others go on).
    ``keep_going`` is asked before each bundle (a replica that lost its lease stops).
    An alert whose devices send nothing stays as it is: no evidence either way."""
    with sessions() as session:
        shas = drift_bundles(session, now - settings.drift_window_s, now)
    changed = events = 0
    for sha in shas:
        if not keep_going():
            break
        with sessions() as session:
            try:
                ref = references.get(session, sha)
                if ref is None:
                    continue
                did, queued = check_bundle(session, ref, settings, now)
                session.commit()
            except Exception:
                session.rollback()
                log.exception("drift check of bundle %s failed; the other bundles go on", sha[:12])
                continue
        changed += did
        events += queued
    return CheckSummary(len(shas), changed, events)


def list_alerts(
    session: Session, *, status: str | None, bundle: str | None, limit: int
) -> list[DriftAlert]:
    if status is not None and status not in STATUSES:
        raise InvalidRequestError(f"status {status!r} is not one of {list(STATUSES)}")
    query = sa.select(DriftAlert).order_by(DriftAlert.opened_at.desc(), DriftAlert.id)
    if status is not None:
        query = query.where(DriftAlert.status == status)
    if bundle is not None:
        query = query.where(DriftAlert.bundle_sha256 == bundle)
    return list(session.scalars(query.limit(limit)))


def get_alert(session: Session, alert_id: str) -> tuple[DriftAlert, list[WebhookDelivery]]:
    row = session.get(DriftAlert, alert_id[:32])
    if row is None:
        raise NotFoundError(f"no drift alert {alert_id[:40]!r}")
    deliveries = session.scalars(
        sa.select(WebhookDelivery)
        .where(WebhookDelivery.alert_id == row.id)
        .order_by(WebhookDelivery.id)
    )
    return row, list(deliveries)
