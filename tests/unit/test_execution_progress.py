"""How device reports move a rollout execution: late, repeated and reordered reports."""

from __future__ import annotations

import pytest

from controller.execution_progress import Row, apply, progress_from_event, progress_from_state
from firmware_bundles.wire import BundleRef, ErrorInfo, Event, State

TARGET = BundleRef("aa" * 32, "m", "2.0.0")
OLD = BundleRef("bb" * 32, "m", "1.0.0")
RID = "r1"


def state(phase: str = "idle", active: BundleRef | None = OLD, **kw: object) -> State:
    values: dict[str, object] = {"deployment_id": RID, "active": active, **kw}
    return State("dev", 1.0, phase, "generic", **values)  # type: ignore[arg-type]


def event(kind: str, **kw: object) -> Event:
    values: dict[str, object] = {"deployment_id": RID, "bundle": TARGET, **kw}
    return Event("dev", 1.0, kind, **values)  # type: ignore[arg-type]


def run(start: str, *reports: State | Event) -> str:
    row = Row(RID, TARGET.manifest_sha256, start)
    for report in reports:
        step = (
            progress_from_state(row, report)
            if isinstance(report, State)
            else progress_from_event(row, report)
        )
        row = apply(row, step)
    return row.state


def test_a_clean_update_walks_every_state() -> None:
    row = Row(RID, TARGET.manifest_sha256, "notified")
    seen = []
    for report in (
        event("update_started"),
        state("installing"),
        state("health_check"),
        state("trial", TARGET, on_trial=True),
        event("committed"),
    ):
        step = (
            progress_from_state(row, report)
            if isinstance(report, State)
            else progress_from_event(row, report)
        )
        row = apply(row, step)
        seen.append(row.state)
    assert seen == ["downloading", "verifying", "installed", "on_trial", "committed"]


@pytest.mark.parametrize(
    ("start", "reports", "end"),
    [
        # Reordered: an older phase after a newer one does not move the row back.
        ("verifying", (state("downloading"),), "verifying"),
        ("on_trial", (event("update_started"),), "on_trial"),
        # A queued row moves only when the controller notifies it.
        ("queued", (state("downloading"), state("idle", TARGET)), "queued"),
        # Final states stay final...
        ("committed", (event("rolled_back", code="trial_errors"),), "committed"),
        ("canceled", (state("idle", TARGET),), "canceled"),
        ("rolled_back", (state("failed", error=ErrorInfo("trial_errors", "x")),), "rolled_back"),
        # ...except that a failure may turn out to be a roll back (the state overtook the
        # event), and a timed-out device that comes back still converges.
        (
            "on_trial",
            (
                state("failed", error=ErrorInfo("trial_errors", "x")),
                event("rolled_back", code="trial_errors"),
            ),
            "rolled_back",
        ),  # fmt: skip
        ("timed_out", (state("idle", TARGET),), "committed"),
        ("timed_out", (state("downloading"),), "timed_out"),
        # Reports about another rollout do not count, unless the device runs the target.
        ("notified", (state("failed", deployment_id="other"),), "notified"),
        ("notified", (event("update_failed", deployment_id="other"),), "notified"),
        ("notified", (state("idle", TARGET, deployment_id="other"),), "committed"),
        # A committed event for another bundle is not this rollout's success.
        ("on_trial", (event("committed", bundle=OLD),), "on_trial"),
    ],
)
def test_ordering_rules(start: str, reports: tuple[State | Event, ...], end: str) -> None:
    assert run(start, *reports) == end


def test_failures_carry_the_device_reason() -> None:
    row = Row(RID, TARGET.manifest_sha256, "downloading")
    step = progress_from_event(row, event("update_failed", code="signature", message="bad key"))
    assert step is not None and (step.state, step.reason_code, step.reason_message) == (
        "failed",
        "signature",
        "bad key",
    )
    failed = progress_from_state(row, state("failed", error=None))
    assert failed is not None and failed.reason_code == "failed"
