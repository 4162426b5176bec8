"""How device reports move a device's row in a deployment (pure rules)."""

from __future__ import annotations

from controller.deployment_progress import (
    Progress,
    Row,
    apply,
    deployment_status,
    progress_from_event,
    progress_from_state,
)
from firmware_bundles.wire import BundleRef, ErrorInfo, Event, State

TARGET = BundleRef("aa" * 32, "m", "2.0.0")
OLD = BundleRef("bb" * 32, "m", "1.0.0")
DEP = "dep-1"


def row(status: str = "pending", phase: str | None = None) -> Row:
    return Row(DEP, TARGET.manifest_sha256, status, phase)


def state(**fields: object) -> State:
    values: dict[str, object] = {
        "device_id": "d",
        "ts": 1.0,
        "phase": "idle",
        "hardware_class": "generic",
        "active": OLD,
    }
    values.update(fields)
    return State(**values)  # type: ignore[arg-type]


def event(kind: str, **fields: object) -> Event:
    return Event("d", 1.0, kind, **fields)  # type: ignore[arg-type]


def test_running_the_target_outside_a_trial_is_success() -> None:
    assert progress_from_state(row(), state(active=TARGET)) == Progress("succeeded", "idle")
    # Already there before the deployment: success as soon as the device says so.
    assert progress_from_state(row("in_progress", "installing"), state(active=TARGET)) == Progress(
        "succeeded", "idle"
    )


def test_a_model_on_trial_is_still_in_progress() -> None:
    on_trial = state(active=TARGET, on_trial=True, phase="trial", deployment_id=DEP)
    assert progress_from_state(row(), on_trial) == Progress("in_progress", "trial")
    assert progress_from_state(row("in_progress", "trial"), on_trial) is None


def test_working_phases_of_this_deployment_are_in_progress() -> None:
    for phase in ("downloading", "verifying", "installing", "health_check"):
        assert progress_from_state(row(), state(phase=phase, deployment_id=DEP)) == Progress(
            "in_progress", phase
        )
    # A report about another (older) deployment says nothing about this one.
    assert progress_from_state(row(), state(phase="downloading", deployment_id="old")) is None
    assert progress_from_state(row(), state(phase="failed", deployment_id="old")) is None


def test_failures_carry_the_device_reason() -> None:
    failed = state(phase="failed", deployment_id=DEP, error=ErrorInfo("verify", "bad signature"))
    assert progress_from_state(row("in_progress"), failed) == Progress(
        "failed", "failed", "verify", "bad signature"
    )
    rolled = event("rolled_back", deployment_id=DEP, code="latency", message="p95 30 ms")
    assert progress_from_event(row("in_progress", "trial"), rolled) == Progress(
        "failed", "failed", "latency", "p95 30 ms"
    )
    assert progress_from_event(row(), event("update_failed", deployment_id="other")) is None


def test_rows_move_forward_only() -> None:
    done = row("succeeded", "idle")
    assert progress_from_state(done, state(phase="downloading", deployment_id=DEP)) is None
    assert progress_from_event(done, event("update_started", deployment_id=DEP)) is None
    failed = row("failed", "failed")
    assert progress_from_event(failed, event("update_started", deployment_id=DEP)) is None
    superseded = row("superseded")
    assert progress_from_state(superseded, state(active=TARGET)) is None
    assert progress_from_event(superseded, event("update_failed", deployment_id=DEP)) is None


def test_commit_event_and_folding_a_batch_in_order() -> None:
    committed = event("committed", deployment_id=DEP, bundle=TARGET)
    current = row()
    for report in (progress_from_event(current, event("update_started", deployment_id=DEP)),):
        current = apply(current, report)
    assert current.status == "in_progress"
    assert progress_from_event(current, committed) == Progress("succeeded", "idle")
    assert progress_from_event(current, event("committed", deployment_id=DEP, bundle=OLD)) is None


def test_deployment_status_from_counts() -> None:
    assert deployment_status({"pending": 1, "succeeded": 3}) == "in_progress"
    assert deployment_status({"succeeded": 3}) == "completed"
    assert deployment_status({"succeeded": 2, "failed": 1}) == "failed"
    assert deployment_status({"superseded": 2}) == "superseded"
    assert deployment_status({}) == "empty"
