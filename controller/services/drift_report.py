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
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from controller import drift_watch as dw
from controller import window_merge as wm
from controller.drift_references import DriftReferences, Reference, is_prediction
from controller.drift_stats import detect_drift
from controller.errors import InvalidRequestError
from controller.services.fleet_scope import Scope, resolve_scope
from controller.services.window_store import DriftPart, Query, drift_parts

log = logging.getLogger(__name__)
MAX_STEPS = 200


def _moments(stats: Mapping[str, Any]) -> dict[str, float | None]:
    n = int(stats["n"])
    if n == 0:
        return {"mean": None, "std": None}
    mean = float(stats["sum"]) / n
    return {"mean": mean, "std": math.sqrt(max(0.0, float(stats["sumsq"]) / n - mean * mean))}


def _timeline(
    parts: Sequence[DriftPart], ref: Reference, since: float, step_s: float, steps: int,
    *, alpha: float, min_samples: int,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """feature -> [{start, n, psi, drifted}] per step (drifted None: too few samples)."""
    bins = ref.bins()
    slots: list[list[tuple[str, Mapping[str, Any]]]] = [[] for _ in range(steps)]
    for part in parts:
        index = dw.step_of(part.last_end, since, step_s, steps)
        slots[index].append(("fleet", part.features))
    timeline: dict[str, list[dict[str, Any]]] = {name: [] for name in bins}
    for index, slot in enumerate(slots):
        merged, _ = dw.merge_windows(slot, bins)
        counts = dw.counts_of(merged.get("fleet", {}))
        figures = {f.name: f for f in detect_drift(bins, counts, alpha=alpha,
                                                   min_samples=min_samples)}  # fmt: skip
        for name in bins:
            f = figures.get(name)
            timeline[name].append({
                "start": since + index * step_s,
                "n": f.n if f else 0,
                "psi": f.psi if f else None,
                "drifted": (f.drifted if f.n >= min_samples else None) if f else None,
            })  # fmt: skip
    return timeline


def _bundle_report(
    parts: Sequence[DriftPart], ref: Reference, since: float, until: float, steps: int,
    *, alpha: float, min_samples: int,
) -> dict[str, Any]:  # fmt: skip
    bins = ref.bins()
    per_device, problems = dw.merge_windows(((p.device_id, p.features) for p in parts), bins)
    for problem in problems[:5]:
        log.warning("drift report for %s@%s: skipped %s", ref.bundle_name, ref.bundle_version,
                    problem)  # fmt: skip
    fleet = wm.merge_features(per_device.values())
    figures = detect_drift(bins, dw.counts_of(fleet), alpha=alpha, min_samples=min_samples)
    finding = dw.find_drift(bins, per_device, alpha=alpha, min_samples=min_samples)
    step_s = (until - since) / steps
    timeline = _timeline(parts, ref, since, step_s, steps, alpha=alpha, min_samples=min_samples)
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
        "devices": len(per_device),
        "windows": sum(p.windows for p in parts),
        "drifted": any(f.drifted for f in figures),
        "drifting_devices": list(finding.devices),
        "features": features,
        "skipped": problems[:20],
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
    alpha: float = 0.01,
    min_samples: int = 200,
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
    by_bundle: dict[str, list[DriftPart]] = {}
    query = Query(devices=resolved.devices, bundle=bundle, since=since, until=until)
    for part in drift_parts(session, query):
        by_bundle.setdefault(part.bundle_sha256, []).append(part)
    report = []
    for sha, parts in sorted(by_bundle.items()):
        ref = references.get(session, sha)
        if ref is None:
            report.append({"bundle": {"manifest_sha256": sha, "name": None, "version": None},
                           "devices": len({p.device_id for p in parts}),
                           "windows": sum(p.windows for p in parts), "drifted": False,
                           "drifting_devices": [], "features": [],
                           "skipped": ["no drift reference for this bundle"]})  # fmt: skip
            continue
        report.append(
            _bundle_report(parts, ref, since, until, steps, alpha=alpha, min_samples=min_samples)
        )
    return report
