"""Fleet drift on demand: merge drift windows of any devices over any time range and
compare them with the bundle's reference.

For each bundle the report gives, per feature: the figures on the merged counts (PSI,
Jensen-Shannon, Hellinger, KS, Wasserstein, chi-square and its p-value) with a verdict
that accounts for the sample size and the number of features; which devices drift on
it (every device x feature tested as one family); and since when, from a timeline of
equal steps over the range.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from controller import drift_watch as dw
from controller import window_merge as wm
from controller.drift_references import DriftReferences, Reference, is_prediction
from controller.drift_stats import FeatureBins, detect_drift
from controller.errors import InvalidRequestError
from controller.services.fleet_scope import Scope, resolve_scope
from controller.services.window_store import Query, drift_bundles_in, drift_parts

log = logging.getLogger(__name__)
MAX_STEPS = 200


def _moments(stats: Mapping[str, Any]) -> dict[str, float | None]:
    n = int(stats["n"])
    if n == 0:
        return {"mean": None, "std": None}
    mean = float(stats["sum"]) / n
    return {"mean": mean, "std": math.sqrt(max(0.0, float(stats["sumsq"]) / n - mean * mean))}


@dataclass(frozen=True)
class Judge:
    alpha: float = 0.01
    min_samples: int = 200
    min_psi: float = 0.0


def _timeline(
    per_step: dw.Merger, bins: dict[str, FeatureBins], since: float, step_s: float, steps: int,
    judge: Judge,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """feature -> [{start, n, psi, drifted}] per step (drifted None: too few samples)."""
    timeline: dict[str, list[dict[str, Any]]] = {name: [] for name in bins}
    for index in range(steps):
        counts = dw.counts_of(per_step.merged.get(index, {}))
        figures = {f.name: f for f in detect_drift(bins, counts, **asdict(judge))}
        for name in bins:
            f = figures.get(name)
            timeline[name].append({
                "start": since + index * step_s,
                "n": f.n if f else 0,
                "psi": f.psi if f else None,
                "drifted": (f.drifted if f.n >= judge.min_samples else None) if f else None,
            })  # fmt: skip
    return timeline


def _bundle_report(
    session: Session, ref: Reference, query: Query, steps: int, judge: Judge
) -> dict[str, Any]:
    """One pass over the bundle's windows, summed per device and per time step: memory
    grows with devices and steps, not with the windows in the range."""
    assert query.since is not None and query.until is not None
    since, until = query.since, query.until
    bins = ref.bins()
    step_s = (until - since) / steps
    per_device, per_step = dw.Merger(bins), dw.Merger(bins)
    windows = 0
    for part in drift_parts(session, query):
        windows += part.windows
        per_device.add(part.device_id, part.features)
        per_step.add(dw.step_of(part.last_end, since, step_s, steps), part.features,
                     part.device_id)  # fmt: skip
    for problem in per_device.problems[:5]:
        log.warning("drift report for %s@%s: skipped %s", ref.bundle_name, ref.bundle_version,
                    problem)  # fmt: skip
    fleet = wm.merge_features(per_device.merged.values())
    figures = detect_drift(bins, dw.counts_of(fleet), **asdict(judge))
    finding = dw.find_drift(bins, per_device.merged, **asdict(judge))
    timeline = _timeline(per_step, bins, since, step_s, steps, judge)
    features = []
    for f in figures:
        stats = fleet[f.name]
        features.append({
            **asdict(f),
            "kind": "prediction" if is_prediction(f.name) else "input",
            "missing": stats["missing"],
            "min": stats["min"],
            "max": stats["max"],
            **_moments(stats),
            "drifting_devices": list(finding.drifting.get(f.name, ())),
            "drifting_since": dw.drifting_since(
                [(s["start"], s["drifted"]) for s in timeline[f.name]]
            ),
            "timeline": timeline[f.name],
        })  # fmt: skip
    features.sort(key=lambda row: (not row["drifted"], -row["psi"], row["name"]))
    return {
        "bundle": {
            "manifest_sha256": ref.bundle_sha256,
            "name": ref.bundle_name,
            "version": ref.bundle_version,
        },
        "devices": len(per_device.merged),
        "windows": windows,
        "drifted": any(f.drifted for f in figures),
        "drifting_devices": list(finding.devices),
        "features": features,
        "skipped": per_device.problems[:20],
    }


def drift_report(
    session: Session,
    references: DriftReferences,
    scope: Scope,
    *,
    since: float,
    until: float,
    bundle: str | None = None,
    steps: int = 12,
    judge: Judge = Judge(),
) -> list[dict[str, Any]]:
    """One entry per bundle with drift windows in range (or just ``bundle``).

    Raises:
        InvalidRequestError: an empty time range or a bad step count.
    """
    if not until > since:
        raise InvalidRequestError(f"'until' ({until}) must be after 'since' ({since})")
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidRequestError(f"'steps' must be 1..{MAX_STEPS}, got {steps}")
    resolved = resolve_scope(session, scope)
    if bundle is None and resolved.rollout is not None:
        bundle = resolved.rollout.bundle.manifest_sha256
    query = Query(devices=resolved.devices, bundle=bundle, since=since, until=until)
    report = []
    for sha in [bundle] if bundle is not None else drift_bundles_in(session, query):
        ref = references.get(session, sha)
        one = replace(query, bundle=sha)
        if ref is None:
            report.append({"bundle": {"manifest_sha256": sha, "name": None, "version": None},
                           "devices": 0, "windows": 0, "drifted": False,
                           "drifting_devices": [], "features": [],
                           "skipped": ["no drift reference for this bundle"]})  # fmt: skip
            continue
        entry = _bundle_report(session, ref, one, steps, judge)
        if entry["windows"] or bundle is not None:
            report.append(entry)
    return report
