"""Write one batch of device reports in one transaction.

Called by the ingest worker with up to a few hundred parsed messages. The batch's
devices are loaded and locked in id order (so replicas queue behind each other instead
of deadlocking), devices never seen before are created on their first message
(``INSERT ... ON CONFLICT DO NOTHING``: another replica may be creating the same one),
changes are made in memory and flushed as grouped UPDATEs, and windows and events go in
with one multi-row INSERT per table that ignores replays. Rollout executions move as
:mod:`controller.execution_progress` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller import execution_progress as progress
from controller.db import chunks, insert_ignoring_duplicates
from controller.inbound import Report
from controller.models import (
    Bundle,
    Device,
    DeviceEvent,
    DriftWindow,
    Rollout,
    RolloutDevice,
    TelemetryWindow,
)
from controller.monitoring_models import DriftRollup, TelemetryRollup
from controller.rollout_engine import FAILED, IN_PROGRESS, ROLLED_BACK, TERMINAL
from controller.services.captures import apply_capture_reports
from controller.services.devices import ensure_devices
from controller.services.window_store import drop_rolled_up
from firmware_bundles import latency_histogram
from firmware_bundles.capture_wire import CaptureReport
from firmware_bundles.wire import Drift, Event, State, Status, Telemetry


@dataclass
class _Tracked:
    """A rollout execution row and the bundle it targets, as the batch moves it."""

    row: RolloutDevice
    target_sha256: str

    def view(self) -> progress.Row:
        return progress.Row(self.row.rollout_id, self.target_sha256, self.row.state)

    def advance(self, step: progress.Progress | None, when: float) -> None:
        if step is None:
            return
        self.row.state = step.state
        if step.state in (FAILED, ROLLED_BACK):
            self.row.reason_code = step.reason_code
            self.row.reason_message = step.reason_message
        elif step.state not in IN_PROGRESS:
            self.row.reason_code = self.row.reason_message = None
        if step.state in TERMINAL:
            self.row.finished_at = when
        if self.row.published_at is None:
            self.row.published_at = when  # the device acted on it: it was delivered
        self.row.updated_at = when


def _device_clock(ts: float, received_at: datetime) -> datetime:
    """A device timestamp as a UTC datetime, never later than when we received it."""
    try:
        when = datetime.fromtimestamp(ts, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return received_at
    return min(when, received_at)


def _seen(device: Device, report: Report, ts: float | None = None) -> None:
    """Mark the device alive; a retained replay only proves it was alive when it sent it."""
    when = report.received_at
    if report.retained:
        if ts is None or ts <= 0:
            return
        when = _device_clock(ts, report.received_at)
    else:
        device.online = True
    if device.last_seen is None or when > device.last_seen:
        device.last_seen = when
        if report.retained:
            device.online = True


def _apply_status(device: Device, status: Status, report: Report) -> None:
    if status.online:
        _seen(device, report, status.ts)
    else:
        device.online = False


def _apply_state(device: Device, state: State) -> bool:
    """Copy a state onto the device; False (nothing done) if it is older than what we have."""
    if device.state_ts is not None and state.ts < device.state_ts:
        return False
    device.state_ts = state.ts
    device.hardware_class = state.hardware_class
    device.tags = list(state.tags)
    device.phase = state.phase
    device.on_trial = state.on_trial
    device.agent_version = state.agent_version or None
    device.reported_generation = state.generation
    active, previous = state.active, state.previous
    device.active_sha256 = active.manifest_sha256 if active else None
    device.active_name = active.name if active else None
    device.active_version = active.version if active else None
    device.previous_sha256 = previous.manifest_sha256 if previous else None
    device.previous_name = previous.name if previous else None
    device.previous_version = previous.version if previous else None
    device.error_code = state.error.code if state.error else None
    device.error_message = state.error.message if state.error else None
    return True


def _tracked_rows(
    session: Session, devices: dict[str, Device], reports: Sequence[Report]
) -> dict[tuple[str, str], _Tracked]:
    """The execution rows these reports can move, locked in id order (after the devices,
    the order every writer takes, so replicas and the rollout tick never deadlock)."""
    wanted = {d.rollout_id for d in devices.values() if d.rollout_id}
    wanted |= {
        r.message.deployment_id
        for r in reports
        if isinstance(r.message, Event) and r.message.deployment_id
    }
    if not wanted:
        return {}
    query = (
        sa.select(RolloutDevice, Bundle.manifest_sha256)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .join(Bundle, Bundle.id == Rollout.bundle_id)
        .where(RolloutDevice.device_id.in_(list(devices)))
        .where(RolloutDevice.rollout_id.in_(sorted(w[:32] for w in wanted)))
        .order_by(RolloutDevice.id)
        .with_for_update(of=RolloutDevice)
    )
    return {
        (row.rollout_id, row.device_id): _Tracked(row, sha) for row, sha in session.execute(query)
    }


@dataclass(frozen=True)
class RawRetention:
    """Where roll-ups begin: windows that ended ``raw_s`` before now may be rolled up
    already (into buckets of ``bucket_s``), so a late copy of one is checked."""

    raw_s: float
    bucket_s: float


def apply_reports(
    session: Session,
    reports: Sequence[Report],
    now: datetime,
    retention: RawRetention | None = None,
) -> None:
    """Apply ``reports`` (in arrival order) to the database; the caller commits."""
    if not reports:
        return
    ids = sorted({r.device_id for r in reports})
    devices: dict[str, Device] = {}
    for part in chunks(ids):
        devices.update(ensure_devices(session, list(part), now))
    tracked = _tracked_rows(session, devices, reports)
    clock = now.timestamp()
    windows: list[dict[str, Any]] = []
    drifts: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    captures: list[CaptureReport] = []
    for report in reports:
        device = devices[report.device_id]
        message = report.message
        if isinstance(message, Status):
            _apply_status(device, message, report)
            continue
        if isinstance(message, State):
            _seen(device, report, message.ts)
            entry = tracked.get((device.rollout_id or "", device.id))
            if _apply_state(device, message) and entry is not None:
                entry.advance(progress.progress_from_state(entry.view(), message), clock)
        elif isinstance(message, Event):
            _seen(device, report, message.ts)
            events.append(_event_row(message, report.received_at))
            entry = tracked.get((message.deployment_id or "", device.id))
            if entry is not None:
                entry.advance(progress.progress_from_event(entry.view(), message), clock)
        elif isinstance(message, Telemetry):
            _seen(device, report, message.window_end)
            windows.append(_telemetry_row(message, report.received_at))
        elif isinstance(message, Drift):
            _seen(device, report, message.window_end)
            drifts.append(_drift_row(message, report.received_at))
        elif isinstance(message, CaptureReport):
            _seen(device, report, message.ts)
            captures.append(message)
    session.flush()
    if retention is not None:
        cutoff = clock - retention.raw_s
        windows = drop_rolled_up(
            session, TelemetryRollup, windows, cutoff=cutoff, bucket_s=retention.bucket_s
        )
        drifts = drop_rolled_up(
            session, DriftRollup, drifts, cutoff=cutoff, bucket_s=retention.bucket_s
        )
    for table, rows in (
        (TelemetryWindow, windows),
        (DriftWindow, drifts),
        (DeviceEvent, events),
    ):
        if rows:
            session.execute(insert_ignoring_duplicates(session, table), rows)
    if captures:
        apply_capture_reports(session, captures)


def _telemetry_row(t: Telemetry, received_at: datetime) -> dict[str, Any]:
    return {
        "device_id": t.device_id,
        "seq": t.seq,
        "window_start": t.window_start,
        "window_end": t.window_end,
        "inference_count": t.inference_count,
        "error_count": t.error_count,
        "latency_p50_ms": t.latency_p50_ms,
        "latency_p95_ms": t.latency_p95_ms,
        "latency_p99_ms": t.latency_p99_ms,
        "latency_histogram": None
        if t.latency_histogram is None
        else latency_histogram.to_wire(t.latency_histogram),
        "bundle_sha256": t.bundle.manifest_sha256 if t.bundle else None,
        "received_at": received_at,
    }


def _drift_row(d: Drift, received_at: datetime) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "seq": d.seq,
        "window_start": d.window_start,
        "window_end": d.window_end,
        "bundle_sha256": d.bundle.manifest_sha256,
        "features": d.features,
        "received_at": received_at,
    }


def _event_row(e: Event, received_at: datetime) -> dict[str, Any]:
    return {
        "device_id": e.device_id,
        "ts": e.ts,
        "type": e.type,
        "rollout_id": e.deployment_id,
        "bundle_sha256": e.bundle.manifest_sha256 if e.bundle else None,
        "code": e.code,
        "message": e.message,
        "received_at": received_at,
    }
