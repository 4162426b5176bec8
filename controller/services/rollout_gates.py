"""Model-health figures for a rollout's gates, from the telemetry its devices send.

- Error rate: errors / inferences of the new bundle on the rollout's devices since the
  rollout started (counts add exactly across windows and devices).
- Latency ratio: p95 of the new bundle against p95 of the *same devices'* previous
  bundle, each read off the merged latency histograms (exact merging; averaging
  per-window p95s would not be). Only devices with enough inferences on both models
  count, so a device class that is simply slower does not skew the figure.
- Input and prediction drift: the share of the new bundle's monitored input (output)
  features whose merged counts on the rollout's devices drift from the bundle's
  reference (chi-square with Benjamini-Hochberg, as the drift check decides).

Telemetry is read raw and from roll-ups alike (:mod:`controller.services.window_store`),
so a rollout longer than the raw retention keeps its evidence. Nothing here decides:
:mod:`controller.rollout_engine` judges the figures.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller.drift_references import DriftReferences, is_prediction
from controller.drift_stats import detect_drift
from controller.drift_watch import counts_of, merge_windows
from controller.models import Rollout, RolloutDevice
from controller.rollout_engine import GateMetrics
from controller.rollout_policy import RolloutPolicy
from controller.services.window_store import Query, drift_parts, telemetry_parts, telemetry_sums
from firmware_bundles import latency_histogram as lh


@dataclass(frozen=True)
class GateSettings:
    # How far before the rollout the previous model's telemetry is read.
    latency_lookback_s: float = 3600.0
    # Inferences a device needs on each model before its latencies count.
    latency_min_inferences: int = 10
    # Drift gates: the verdict's false discovery rate and the samples it needs.
    drift_alpha: float = 0.01
    drift_min_samples: int = 200
    # A significant change smaller than this PSI is not drift: a rollout's merged sample
    # grows large enough to make any difference significant.
    drift_min_psi: float = 0.1


def _rollout_devices(session: Session, rollout: Rollout) -> dict[str, str | None]:
    """The rollout's devices -> the bundle each ran when notified (None: none)."""
    query = sa.select(RolloutDevice.device_id, RolloutDevice.previous_sha256).where(
        RolloutDevice.rollout_id == rollout.id
    )
    return dict(session.execute(query).all())


def _error_counts(
    session: Session, rollout: Rollout, devices: list[str], since: float
) -> tuple[int, int]:
    query = Query(devices=devices, bundle=rollout.bundle.manifest_sha256, since=since)
    return telemetry_sums(session, query)


def _latency_ratio(
    session: Session,
    rollout: Rollout,
    previous: dict[str, str | None],
    since: float,
    settings: GateSettings,
) -> tuple[float | None, int]:
    target = rollout.bundle.manifest_sha256
    new: dict[str, dict[int, int]] = defaultdict(dict)
    old: dict[str, dict[int, int]] = defaultdict(dict)
    query = Query(
        devices=[d for d, sha in previous.items() if sha is not None],
        since=since - settings.latency_lookback_s,
    )
    for part in telemetry_parts(session, query):
        if part.bundle_sha256 == target:
            into = new
        elif part.bundle_sha256 == previous.get(part.device_id):
            into = old
        else:
            continue
        histogram = lh.parse_histogram(part.histogram, "stored latency histogram")
        into[part.device_id] = lh.merge((into[part.device_id], histogram))
    floor = settings.latency_min_inferences
    devices = [
        d for d in new if sum(new[d].values()) >= floor and sum(old.get(d, {}).values()) >= floor
    ]
    if not devices:
        return None, 0
    p95_new = lh.percentile(lh.merge(new[d] for d in devices), 0.95)
    p95_old = lh.percentile(lh.merge(old[d] for d in devices), 0.95)
    if p95_new is None or not p95_old:
        return None, 0
    return p95_new / p95_old, len(devices)


def _drift(
    session: Session,
    rollout: Rollout,
    devices: list[str],
    since: float,
    settings: GateSettings,
    references: DriftReferences,
) -> dict[str, Any]:
    """Input and prediction drift of the new bundle on the rollout's devices, merged
    since the rollout started, against the bundle's reference."""
    ref = references.get(session, rollout.bundle.manifest_sha256)
    if ref is None:
        return {"drift_detail": "the bundle has no drift reference"}
    query = Query(devices=devices, bundle=ref.bundle_sha256, since=since)
    bins = ref.bins()
    merged, _ = merge_windows((("all", p.features) for p in drift_parts(session, query)), bins)
    counts = counts_of(merged.get("all", {}))
    if not counts:
        return {}
    figures = detect_drift(
        bins,
        counts,
        alpha=settings.drift_alpha,
        min_samples=settings.drift_min_samples,
        min_psi=settings.drift_min_psi,
    )
    shares: dict[str, float | None] = {}
    for kind, pick in (("input", False), ("prediction", True)):
        chosen = [f for f in figures if is_prediction(f.name) == pick]
        shares[kind] = sum(f.drifted for f in chosen) / len(chosen) if chosen else None
    worst = sorted((f for f in figures if f.drifted), key=lambda f: -f.psi)[:3]
    return {
        "input_drift_share": shares["input"],
        "prediction_drift_share": shares["prediction"],
        "drift_samples": max(f.n for f in figures),
        "drift_detail": ", ".join(f"{f.name} PSI {f.psi:.3f}" for f in worst),
    }


def gate_metrics(
    session: Session,
    rollout: Rollout,
    policy: RolloutPolicy,
    settings: GateSettings,
    references: DriftReferences | None = None,
) -> GateMetrics:
    """The new bundle's health on ``rollout``'s devices, as of now.

    The error rate is one SQL sum; the latency ratio merges histograms in Python and
    is computed only for a rollout with a latency gate; drift likewise, only with a
    drift gate (and ``references`` to read the bundle's reference from).
    """
    if rollout.started_at is None:
        return GateMetrics()
    previous = _rollout_devices(session, rollout)
    devices = list(previous)
    inferences, errors = _error_counts(session, rollout, devices, rollout.started_at)
    ratio, latency_devices = None, 0
    kinds = {c.kind for c in policy.abort}
    if "latency_ratio" in kinds:
        ratio, latency_devices = _latency_ratio(
            session, rollout, previous, rollout.started_at, settings
        )
    drift: dict[str, Any] = {}
    if kinds & {"input_drift", "prediction_drift"} and references is not None:
        drift = _drift(session, rollout, devices, rollout.started_at, settings, references)
    return GateMetrics(
        error_rate=errors / inferences if inferences else None,
        error_samples=inferences,
        latency_ratio=ratio,
        latency_devices=latency_devices,
        **drift,
    )


def metrics_to_dict(metrics: GateMetrics) -> dict[str, float | int | str | None]:
    return dict(metrics.__dict__)


def metrics_from_dict(data: dict[str, object] | None) -> GateMetrics:
    if not data:
        return GateMetrics()
    known = GateMetrics.__dataclass_fields__
    return GateMetrics(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]
