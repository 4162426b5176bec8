"""Fleet-level telemetry: inferences, error rates and latency percentiles per group.

Counts add up exactly across windows and devices, and latency percentiles are read off
the merged histograms (averaging per-window percentiles would be wrong), so a figure
for a bundle version, a rollout wave or a hardware class over any time range is exact
(at bucket granularity where the range reaches into roll-ups).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller.errors import InvalidRequestError
from controller.models import Bundle, Device
from controller.services.fleet_scope import Scope, resolve_scope
from controller.services.window_store import Query, telemetry_parts
from firmware_bundles import latency_histogram as lh

GROUPS = ("bundle", "wave", "device", "hardware_class")


@dataclass
class _Group:
    devices: set[str] = field(default_factory=set)
    windows: int = 0
    inferences: int = 0
    errors: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    first_start: float = float("inf")
    last_end: float = float("-inf")


def bundle_names(session: Session, shas: Sequence[str]) -> dict[str, tuple[str, str]]:
    """manifest sha256 -> (name, version) of the bundles the controller knows."""
    if not shas:
        return {}
    query = sa.select(Bundle.manifest_sha256, Bundle.name, Bundle.version).where(
        Bundle.manifest_sha256.in_(list(shas))
    )
    return {sha: (name, version) for sha, name, version in session.execute(query)}


def summarize(
    session: Session,
    scope: Scope,
    *,
    since: float,
    until: float,
    bundle: str | None = None,
    group_by: Sequence[str] = ("bundle",),
) -> list[dict[str, Any]]:
    """One row per group: devices, windows, inferences, errors, error rate, p50/95/99.

    Raises:
        InvalidRequestError: an unknown grouping, or ``wave`` without a rollout.
    """
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise InvalidRequestError(f"cannot group by {unknown}: choose from {list(GROUPS)}")
    if "wave" in group_by and scope.rollout is None:
        raise InvalidRequestError("grouping by 'wave' needs 'rollout'")
    resolved = resolve_scope(session, scope)
    classes: dict[str, str | None] = {}
    if "hardware_class" in group_by:
        classes = dict(session.execute(sa.select(Device.id, Device.hardware_class)).all())
    groups: dict[tuple[Any, ...], _Group] = {}
    query = Query(devices=resolved.devices, bundle=bundle, since=since, until=until)
    for part in telemetry_parts(session, query):
        values = {
            "bundle": part.bundle_sha256,
            "wave": resolved.waves.get(part.device_id),
            "device": part.device_id,
            "hardware_class": classes.get(part.device_id),
        }
        group = groups.setdefault(tuple(values[g] for g in group_by), _Group())
        group.devices.add(part.device_id)
        group.windows += part.windows
        group.inferences += part.inference_count
        group.errors += part.error_count
        # Stored histograms were checked when they arrived (wire) or built here (roll-ups).
        merged = group.histogram
        for bucket, n in part.histogram.items():
            index = int(bucket)
            merged[index] = merged.get(index, 0) + n
        group.first_start = min(group.first_start, part.first_start)
        group.last_end = max(group.last_end, part.last_end)
    names = bundle_names(session, sorted({k[group_by.index("bundle")] for k in groups}) if
                         "bundle" in group_by else [])  # fmt: skip
    rows = []
    for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        g = groups[key]
        row: dict[str, Any] = {}
        for name, value in zip(group_by, key, strict=True):
            if name == "bundle":
                known = names.get(value)
                row["bundle"] = {
                    "manifest_sha256": value or None,
                    "name": known[0] if known else None,
                    "version": known[1] if known else None,
                }
            else:
                row["device_id" if name == "device" else name] = value
        row.update(
            devices=len(g.devices),
            windows=g.windows,
            inference_count=g.inferences,
            error_count=g.errors,
            error_rate=g.errors / g.inferences if g.inferences else None,
            latency_p50_ms=lh.percentile(g.histogram, 0.50),
            latency_p95_ms=lh.percentile(g.histogram, 0.95),
            latency_p99_ms=lh.percentile(g.histogram, 0.99),
            first_window_start=g.first_start,
            last_window_end=g.last_end,
        )
        rows.append(row)
    return rows
