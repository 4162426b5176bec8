"""Telemetry and drift windows as stored: recent ones raw, older ones rolled up.

Raw windows (``telemetry_windows``, ``drift_windows``) are kept for the raw retention;
:func:`roll_up_batch` then sums them into one row per device, bundle and time bucket
(``telemetry_rollups``, ``drift_rollups``) and deletes them. A roll-up remembers the
window numbers it holds, so a window the device sends again later (an outbox resend
after the first copy was rolled up) is recognised and not counted twice, both here and
at ingest (:func:`drop_rolled_up`). Roll-ups expire after the retention.

A late copy must not slip between the two: an ingest that finds no roll-up holding
its window and then inserts it raw after a roll-up pass has taken the original (and
deleted it raw) would count the window twice until the next pass. On PostgreSQL the
ingest holds a shared advisory lock from its look at the roll-ups to its commit, and a
roll-up pass holds it exclusively, so the pass waits (only ingests carrying windows
older than the raw retention take it: rare). On SQLite the ingest has written (device
rows) before it looks, so it holds the database's write lock already.

Readers get both kinds through :func:`telemetry_parts` and :func:`drift_parts`: a
roll-up is a window like any other (counts add up exactly), so every query merges them
the same way. A window counts at the time it ended (a range is ``(since, until]``); a
roll-up counts when any window in it ended inside the range, so a range reaching past
the raw retention is answered at bucket granularity (exactly, on bucket edges).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller import window_merge as wm
from controller.db import advisory_xact_lock, chunks
from controller.models import DriftWindow, TelemetryWindow
from controller.monitoring_models import DriftRollup, TelemetryRollup

log = logging.getLogger(__name__)
ROLLUP_LOCK_KEY = 0x0EDF2011  # PostgreSQL advisory lock: roll-up pass vs late copies
# An honest device's windows in one bucket are one run of numbers (a few more after
# restarts); past this many pieces the roll-up stops taking its windows.
MAX_RANGES = 256


@dataclass(frozen=True)
class TelemetryPart:
    """Telemetry of one device on one bundle: a raw window or a roll-up of many."""

    device_id: str
    bundle_sha256: str  # "" -> no model was serving
    windows: int
    inference_count: int
    error_count: int
    histogram: dict[str, int]  # latency histogram, wire form (bucket -> count)
    first_start: float
    last_end: float


@dataclass(frozen=True)
class DriftPart:
    device_id: str
    bundle_sha256: str
    windows: int
    features: dict[str, Any]
    first_start: float
    last_end: float


@dataclass(frozen=True)
class Query:
    """Which windows: of these devices (None: all), this bundle, ending in (since, until]."""

    devices: Sequence[str] | None = None
    bundle: str | None = None
    since: float | None = None
    until: float | None = None


def _device_batches(query: Query) -> Iterator[Sequence[str] | None]:
    if query.devices is None:
        yield None
    else:
        yield from chunks(sorted(set(query.devices)))


def _raw_filter(select: Any, model: Any, query: Query, devices: Sequence[str] | None) -> Any:
    if devices is not None:
        select = select.where(model.device_id.in_(devices))
    if query.bundle is not None:
        select = select.where(model.bundle_sha256 == query.bundle)
    if query.since is not None:
        select = select.where(model.window_end > query.since)
    if query.until is not None:
        select = select.where(model.window_end <= query.until)
    return select


def _rollup_filter(select: Any, model: Any, query: Query, devices: Sequence[str] | None) -> Any:
    if devices is not None:
        select = select.where(model.device_id.in_(devices))
    if query.bundle is not None:
        select = select.where(model.bundle_sha256 == query.bundle)
    if query.since is not None:
        select = select.where(model.last_end > query.since)
    if query.until is not None:
        select = select.where(model.first_end <= query.until)
    return select


def telemetry_parts(session: Session, query: Query) -> Iterator[TelemetryPart]:
    """Every raw window and roll-up matching ``query``."""
    for devices in _device_batches(query):
        raw = sa.select(
            TelemetryWindow.device_id,
            TelemetryWindow.bundle_sha256,
            TelemetryWindow.inference_count,
            TelemetryWindow.error_count,
            TelemetryWindow.latency_histogram,
            TelemetryWindow.window_start,
            TelemetryWindow.window_end,
        )
        for device, bundle, count, errors, hist, start, end in session.execute(
            _raw_filter(raw, TelemetryWindow, query, devices)
        ):
            yield TelemetryPart(device, bundle or "", 1, count, errors, hist or {}, start, end)
        rolled = sa.select(TelemetryRollup)
        for row in session.scalars(_rollup_filter(rolled, TelemetryRollup, query, devices)):
            yield TelemetryPart(
                row.device_id, row.bundle_sha256, row.windows, row.inference_count,
                row.error_count, row.latency_histogram, row.first_start, row.last_end,
            )  # fmt: skip


def telemetry_sums(session: Session, query: Query) -> tuple[int, int]:
    """(inferences, errors) of the windows and roll-ups matching ``query``, summed in SQL."""
    inferences = errors = 0
    for devices in _device_batches(query):
        for model in (TelemetryWindow, TelemetryRollup):
            total = sa.select(
                sa.func.coalesce(sa.func.sum(model.inference_count), 0),
                sa.func.coalesce(sa.func.sum(model.error_count), 0),
            )
            filtered = (_raw_filter if model is TelemetryWindow else _rollup_filter)(
                total, model, query, devices
            )
            count, errs = session.execute(filtered).one()
            inferences, errors = inferences + int(count), errors + int(errs)
    return inferences, errors


def drift_parts(session: Session, query: Query) -> Iterator[DriftPart]:
    """Every raw drift window and roll-up matching ``query``."""
    for devices in _device_batches(query):
        raw = sa.select(
            DriftWindow.device_id,
            DriftWindow.bundle_sha256,
            DriftWindow.features,
            DriftWindow.window_start,
            DriftWindow.window_end,
        )
        for device, bundle, features, start, end in session.execute(
            _raw_filter(raw, DriftWindow, query, devices)
        ):
            yield DriftPart(device, bundle, 1, features, start, end)
        rolled = sa.select(DriftRollup)
        for row in session.scalars(_rollup_filter(rolled, DriftRollup, query, devices)):
            yield DriftPart(
                row.device_id, row.bundle_sha256, row.windows, row.features,
                row.first_start, row.last_end,
            )  # fmt: skip


def drift_bundles_in(session: Session, query: Query) -> list[str]:
    """Bundles with drift windows (raw or rolled up) matching ``query``."""
    found: set[str] = set()
    for devices in _device_batches(query):
        found.update(session.scalars(
            _raw_filter(sa.select(DriftWindow.bundle_sha256), DriftWindow, query, devices)
            .distinct()
        ))  # fmt: skip
        found.update(session.scalars(
            _rollup_filter(sa.select(DriftRollup.bundle_sha256), DriftRollup, query, devices)
            .distinct()
        ))  # fmt: skip
    return sorted(found)


def drift_bundles(session: Session, since: float, until: float) -> list[str]:
    """Bundles with raw drift windows that ended in ``(since, until]``."""
    query = (
        sa.select(DriftWindow.bundle_sha256)
        .where(DriftWindow.window_end > since, DriftWindow.window_end <= until)
        .distinct()
    )
    return sorted(session.scalars(query))


# ---------------------------------------------------------------------- rolling up


@dataclass
class RollupCounts:
    """What one roll-up pass did (summed over both tables)."""

    rolled_up: int = 0  # raw windows added to roll-ups
    duplicates: int = 0  # raw windows a roll-up already held (dropped)
    rejected: int = 0  # raw windows that do not add up with their bucket (dropped, logged)
    rollups_written: int = 0
    expired: int = 0  # roll-ups past the retention, deleted
    more: bool = False  # a batch was full: call again

    def add(self, other: RollupCounts) -> None:
        self.rolled_up += other.rolled_up
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.rollups_written += other.rollups_written
        self.expired += other.expired
        self.more = self.more or other.more


@dataclass
class _Sum:
    """A roll-up row being built: the stored row's fields plus what is added."""

    windows: int = 0
    seqs: wm.Ranges = field(default_factory=list)
    first_start: float = float("inf")
    first_end: float = float("inf")
    last_end: float = float("-inf")
    values: dict[str, Any] = field(default_factory=dict)


def _telemetry_add(total: dict[str, Any], row: Any) -> dict[str, Any]:
    return {
        "inference_count": total.get("inference_count", 0) + row.inference_count,
        "error_count": total.get("error_count", 0) + row.error_count,
        "latency_histogram": wm.merge_histograms(
            (total.get("latency_histogram"), row.latency_histogram)
        ),
    }


def _drift_add(total: dict[str, Any], row: Any) -> dict[str, Any]:
    return {"features": wm.merge_features((total.get("features") or {}, row.features))}


_KINDS: tuple[tuple[Any, Any, Any], ...] = (
    (TelemetryWindow, TelemetryRollup, _telemetry_add),
    (DriftWindow, DriftRollup, _drift_add),
)


def _roll_table(
    session: Session, raw: Any, rollup: Any, add: Any, cutoff: float, bucket_s: float, batch: int
) -> RollupCounts:
    # Plain rows, not ORM objects: a roll-up pass may read millions of windows.
    query = sa.select(*raw.__table__.columns).where(raw.window_end < cutoff)
    rows = list(session.execute(query.order_by(raw.id).limit(batch)))
    counts = RollupCounts(more=len(rows) == batch)
    if not rows:
        return counts
    groups: dict[tuple[str, str, float], list[Any]] = defaultdict(list)
    for row in rows:
        key = (row.device_id, row.bundle_sha256 or "", wm.bucket_start(row.window_end, bucket_s))
        groups[key].append(row)
    existing = {
        (r.device_id, r.bundle_sha256, r.bucket_start): r
        for part in chunks(sorted({k[0] for k in groups}))
        for r in session.scalars(
            sa.select(rollup)
            .where(rollup.device_id.in_(part))
            .where(rollup.bucket_start.in_(sorted({k[2] for k in groups})))
            .with_for_update()
        )
    }
    inserts = []
    for key, members in groups.items():
        stored = existing.get(key)
        total = (
            _Sum(stored.windows, stored.seqs, stored.first_start, stored.first_end,
                 stored.last_end, _stored_values(stored))
            if stored is not None
            else _Sum()
        )  # fmt: skip
        for row in members:
            if wm.ranges_contain(total.seqs, row.seq):
                counts.duplicates += 1
                continue
            seqs = wm.ranges_add(total.seqs, row.seq)
            try:
                if len(seqs) > MAX_RANGES:
                    raise ValueError(f"window numbers in {len(seqs)} pieces in one bucket")
                values = add(total.values, row)
            except (ValueError, TypeError, OverflowError) as exc:  # cannot add up with its bucket
                counts.rejected += 1
                log.warning("roll-up: dropped %s window %d of device %s: %s",
                            raw.__tablename__, row.seq, row.device_id, exc)  # fmt: skip
                continue
            total.seqs, total.values = seqs, values
            total.windows += 1
            total.first_start = min(total.first_start, row.window_start)
            total.first_end = min(total.first_end, row.window_end)
            total.last_end = max(total.last_end, row.window_end)
            counts.rolled_up += 1
        if total.windows == 0:
            continue
        fields_ = {
            "windows": total.windows,
            "seqs": total.seqs,
            "first_start": total.first_start,
            "first_end": total.first_end,
            "last_end": total.last_end,
            **total.values,
        }
        if stored is None:
            device, bundle, bucket = key
            inserts.append(
                {"device_id": device, "bundle_sha256": bundle, "bucket_start": bucket, **fields_}
            )
        else:
            for name, value in fields_.items():
                setattr(stored, name, value)
        counts.rollups_written += 1
    session.flush()
    if inserts:
        session.execute(sa.insert(rollup), inserts)
    for part in chunks([r.id for r in rows]):
        session.execute(
            sa.delete(raw).where(raw.id.in_(part)).execution_options(synchronize_session=False)
        )
    return counts


def _stored_values(stored: Any) -> dict[str, Any]:
    if isinstance(stored, TelemetryRollup):
        return {
            "inference_count": stored.inference_count,
            "error_count": stored.error_count,
            "latency_histogram": stored.latency_histogram,
        }
    return {"features": stored.features}


def roll_up_batch(
    session: Session,
    *,
    now: float,
    raw_retention_s: float,
    bucket_s: float,
    retention_s: float,
    batch: int,
) -> RollupCounts:
    """Roll up at most ``batch`` raw windows of each kind older than the raw retention,
    and delete roll-ups older than the retention. The caller commits; ``more`` says a
    batch was full and another call has work to do."""
    advisory_xact_lock(session, ROLLUP_LOCK_KEY)
    counts = RollupCounts()
    for raw, rollup, add in _KINDS:
        counts.add(_roll_table(session, raw, rollup, add, now - raw_retention_s, bucket_s, batch))
        expired = session.execute(  # by bucket (indexed): whole buckets past the retention
            sa.delete(rollup)
            .where(rollup.bucket_start < now - retention_s - bucket_s)
            .execution_options(synchronize_session=False)
        )
        counts.expired += int(getattr(expired, "rowcount", 0) or 0)
    return counts


def drop_rolled_up(
    session: Session,
    rollup: type[TelemetryRollup] | type[DriftRollup],
    rows: list[dict[str, Any]],
    *,
    cutoff: float,
    bucket_s: float,
) -> list[dict[str, Any]]:
    """``rows`` (about to be inserted raw) without windows a roll-up already holds.

    Only windows that ended before ``cutoff`` (the raw retention's edge) can have been
    rolled up; newer ones are returned untouched without a query.
    """
    old = [r for r in rows if r["window_end"] < cutoff]
    if not old:
        return rows
    # No roll-up pass commits before we do (PostgreSQL; SQLite: see the module text).
    advisory_xact_lock(session, ROLLUP_LOCK_KEY, shared=True)
    keys = {(r["device_id"], r["bundle_sha256"] or "", wm.bucket_start(r["window_end"], bucket_s))
            for r in old}  # fmt: skip
    held: dict[tuple[str, str, float], wm.Ranges] = {}
    for part in chunks(sorted({k[0] for k in keys})):
        for device, bundle, bucket, seqs in session.execute(
            sa.select(rollup.device_id, rollup.bundle_sha256, rollup.bucket_start, rollup.seqs)
            .where(rollup.device_id.in_(part))
            .where(rollup.bucket_start.in_(sorted({k[2] for k in keys})))
        ):
            held[(device, bundle, bucket)] = seqs
    if not held:
        return rows

    def known(r: dict[str, Any]) -> bool:
        if r["window_end"] >= cutoff:
            return False
        key = (r["device_id"], r["bundle_sha256"] or "", wm.bucket_start(r["window_end"], bucket_s))
        return key in held and wm.ranges_contain(held[key], r["seq"])

    return [r for r in rows if not known(r)]
