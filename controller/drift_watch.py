"""Deciding fleet drift and the life of a drift alert. Pure: counts and ``now`` in.

A drift check looks at the last few minutes of one bundle's drift windows, merged per
device, and tests every device x feature against the bundle's reference as one family
(:func:`controller.drift_stats.detect_drift_groups`): a fleet of 1,000 quiet devices
raises an alarm about as rarely as one device does. What drifts becomes an alert:

- ``pending`` when first found; ``open`` once ``confirmations`` checks in a row found
  drift, each after the first on data that arrived since the one before (a single
  unlucky stretch of data never reaches a webhook);
- an open alert is ``updated`` when more devices or features join it;
- ``resolved`` after ``resolve_after`` checks in a row found none; a pending alert the
  next check does not confirm is ``dismissed``.

A check with too few samples to judge (devices idle) changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from controller import window_merge as wm
from controller.drift_stats import FeatureBins, detect_drift_groups

PENDING, OPEN, RESOLVED, DISMISSED = "pending", "open", "resolved", "dismissed"
ACTIVE = (PENDING, OPEN)
OPENED, UPDATED, CLOSED = "drift_alert.opened", "drift_alert.updated", "drift_alert.resolved"


class Merger:
    """Sums drift windows per key (a device, a device and a time step, ...), keeping only
    the features the reference knows with its bucket count; what it skips, it says."""

    def __init__(self, bins: Mapping[str, FeatureBins]) -> None:
        self.bins = bins
        self.merged: dict[Any, dict[str, wm.FeatureStats]] = {}
        self.problems: list[str] = []

    def add(self, key: Any, features: Mapping[str, Any], who: str = "") -> None:
        into = self.merged.setdefault(key, {})
        for name, stats in features.items():
            ref = self.bins.get(name)
            if ref is None:
                continue  # a feature of another extractor config: nothing to compare with
            if len(stats["counts"]) != len(ref.counts):
                if len(self.problems) < 100:
                    self.problems.append(
                        f"{who or key}: feature {name!r} has {len(stats['counts'])} buckets, "
                        f"the reference {len(ref.counts)}"
                    )
                continue
            into[name] = wm.add_stats(into.get(name) or wm.empty_stats(len(ref.counts)), stats)


def merge_windows(
    parts: Iterable[tuple[str, Mapping[str, Any]]], bins: Mapping[str, FeatureBins]
) -> tuple[dict[str, dict[str, wm.FeatureStats]], list[str]]:
    """Sum ``(group, features)`` windows per group (see :class:`Merger`)."""
    merger = Merger(bins)
    for group, features in parts:
        merger.add(group, features)
    return merger.merged, merger.problems


def counts_of(merged: Mapping[str, wm.FeatureStats]) -> dict[str, list[int]]:
    return {name: list(stats["counts"]) for name, stats in merged.items()}


@dataclass(frozen=True)
class Finding:
    """One check of one bundle: how many tests had a verdict, and who drifts on what."""

    tested: int  # device x feature tests with enough samples for a verdict
    # feature -> devices on which it drifts
    drifting: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return self.tested > 0

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({d for devices in self.drifting.values() for d in devices}))


def find_drift(
    bins: Mapping[str, FeatureBins],
    per_device: Mapping[str, Mapping[str, wm.FeatureStats]],
    *,
    alpha: float,
    min_samples: int,
    min_psi: float = 0.0,
) -> Finding:
    figures = detect_drift_groups(
        bins,
        {device: counts_of(merged) for device, merged in per_device.items()},
        alpha=alpha,
        min_samples=min_samples,
        min_psi=min_psi,
    )
    drifting: dict[str, list[str]] = {}
    for device, rows in sorted(figures.items()):
        for row in rows:
            if row.drifted:
                drifting.setdefault(row.name, []).append(device)
    tested = sum(1 for rows in figures.values() for row in rows if row.n >= min_samples)
    return Finding(tested, {name: tuple(d) for name, d in sorted(drifting.items())})


def step_of(end: float, since: float, step_s: float, steps: int) -> int:
    """Which of ``steps`` equal steps from ``since`` holds a window that ended at
    ``end`` (step k covers (since + k*step_s, since + (k+1)*step_s])."""
    return min(steps - 1, max(0, math.ceil((end - since) / step_s) - 1))


def drifting_since(steps: Sequence[tuple[float, bool | None]]) -> float | None:
    """Start of the run of drifting steps that reaches the newest judged step.

    ``steps``: (step start, verdict) oldest first; None is a step too thin to judge,
    which neither breaks nor starts a run. None when the newest judged step is quiet.
    """
    since = None
    for start, drifted in steps:
        if drifted is None:
            continue
        if drifted:
            since = start if since is None else since
        else:
            since = None
    return since


def onset(steps: Sequence[tuple[float, bool | None]]) -> float | None:
    """When a drift the whole window shows began: the start of the last run of drifting
    steps (newer quiet or thin steps do not erase it: the newest data may be thin), or
    the first step with data when no single step is drifting on its own (a drift spread
    thinly over the whole window). None: no step has data."""
    found = None
    previous = False
    for start, drifted in steps:
        if drifted is None:
            continue
        if drifted and not previous:
            found = start
        previous = drifted
    if found is not None:
        return found
    return next((start for start, drifted in steps if drifted is not None), None)


@dataclass(frozen=True)
class AlertFeature:
    """One drifting feature of an alert; the figures merge its drifting devices."""

    name: str
    devices: tuple[str, ...]
    since: float
    figures: Mapping[str, Any]  # FeatureDrift fields of the latest check


@dataclass(frozen=True)
class AlertState:
    status: str
    opened_at: float
    last_seen_at: float
    confirmations: int = 1
    quiet_checks: int = 0
    resolved_at: float | None = None
    features: tuple[AlertFeature, ...] = ()

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({d for f in self.features for d in f.devices}))


@dataclass(frozen=True)
class AlertPolicy:
    confirmations: int = 2
    resolve_after: int = 3


def _joined(old: Sequence[AlertFeature], new: Sequence[AlertFeature]) -> tuple[AlertFeature, ...]:
    """The features found now, keeping when each started; earlier ones stay listed."""
    known = {f.name: f for f in old}
    out = {f.name: f for f in old}
    for feature in new:
        before = known.get(feature.name)
        since = feature.since if before is None else min(before.since, feature.since)
        devices = feature.devices if before is None else tuple(
            sorted(set(before.devices) | set(feature.devices))
        )  # fmt: skip
        out[feature.name] = replace(feature, since=since, devices=devices)
    return tuple(out[name] for name in sorted(out))


def step_alert(
    alert: AlertState | None,
    finding: Finding,
    features: Sequence[AlertFeature],
    now: float,
    policy: AlertPolicy,
    fresh: Finding | None = None,
) -> tuple[AlertState | None, str | None]:
    """The alert after one check, and the event to deliver (None: nothing to tell).

    ``alert`` is the bundle's active (pending or open) alert, if any; ``features`` are
    the drifting features this check found (over the whole check window), with their
    figures. A pending alert is confirmed only by ``fresh``: what arrived since it was
    last seen, tested on its own (consecutive check windows overlap, so the whole
    window would confirm one unlucky minute by itself); until ``fresh`` has enough
    samples to judge, it waits.
    """
    if alert is not None and alert.status == PENDING:
        evidence = fresh if fresh is not None else finding
        if not evidence.judged:
            return alert, None
        if not evidence.drifting:
            return replace(alert, status=DISMISSED, resolved_at=now), None
        confirmations = alert.confirmations + 1
        state = replace(
            alert, last_seen_at=now, confirmations=confirmations,
            features=_joined(alert.features, features),
        )  # fmt: skip
        if confirmations >= policy.confirmations:
            return replace(state, status=OPEN, opened_at=now), OPENED
        return state, None
    if not finding.judged:
        return alert, None
    if features:
        if alert is None:
            status = OPEN if policy.confirmations <= 1 else PENDING
            state = AlertState(status, now, now, features=tuple(sorted(features, key=_name)))
            return state, (OPENED if status == OPEN else None)
        joined = _joined(alert.features, features)
        state = replace(alert, last_seen_at=now, confirmations=alert.confirmations + 1,
                        quiet_checks=0, features=joined)  # fmt: skip
        grew = set(state.devices) > set(alert.devices) or len(joined) > len(alert.features)
        return state, (UPDATED if grew else None)
    if alert is None:
        return None, None
    quiet = alert.quiet_checks + 1
    if quiet >= policy.resolve_after:
        return replace(alert, status=RESOLVED, quiet_checks=quiet, resolved_at=now), CLOSED
    return replace(alert, quiet_checks=quiet), None


def _name(feature: AlertFeature) -> str:
    return feature.name
