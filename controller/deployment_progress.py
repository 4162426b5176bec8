"""How a device's reports move its row in a deployment: pure, no database, no clock.

The ingest worker calls these for every state and event a device sends and writes the
returned :class:`Progress` (or nothing). The rules:

- The device runs the target bundle and is not on trial -> ``succeeded``. On trial it
  is still ``in_progress``: the trial may yet roll it back.
- A state about this deployment in phase ``failed``, or an ``update_failed`` /
  ``rolled_back`` event naming this deployment -> ``failed`` with the device's code and
  message as the reason.
- A state about this deployment in phase downloading / verifying / installing /
  health_check / trial, or an ``update_started`` event -> ``in_progress``.
- A row never goes back to ``pending``; ``succeeded`` and ``failed`` do not fall back to
  ``in_progress``; a ``superseded`` row (a newer deployment took the device) never moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.models import FAILED, IN_PROGRESS, PENDING, SUCCEEDED, SUPERSEDED
from firmware_bundles.wire import Event, State

WORKING_PHASES = frozenset({"downloading", "verifying", "installing", "health_check", "trial"})
FAILURE_EVENTS = frozenset({"update_failed", "rolled_back"})


@dataclass(frozen=True)
class Row:
    """What the rule needs to know about one device's row in one deployment."""

    deployment_id: str
    target_sha256: str
    status: str
    phase: str | None = None


@dataclass(frozen=True)
class Progress:
    status: str
    phase: str | None = None
    reason_code: str | None = None
    reason_message: str | None = None


def _move(row: Row, new: Progress) -> Progress | None:
    """Apply the monotonic rules; ``None`` when nothing changes."""
    if row.status == SUPERSEDED:
        return None
    if new.status == IN_PROGRESS and row.status not in (PENDING, IN_PROGRESS):
        return None
    if new.status == row.status == IN_PROGRESS and new.phase == row.phase:
        return None
    if new.status == SUCCEEDED and row.status == SUCCEEDED:
        return None
    if new.status == FAILED and row.status == FAILED:
        return None
    return new


def progress_from_state(row: Row, state: State) -> Progress | None:
    """The row's new status after ``state`` (the device's current deployment's row)."""
    active = state.active
    if active is not None and active.manifest_sha256 == row.target_sha256:
        if state.on_trial:
            return _move(row, Progress(IN_PROGRESS, "trial"))
        return _move(row, Progress(SUCCEEDED, state.phase))
    if state.deployment_id != row.deployment_id:
        return None  # a report about an older desired state
    if state.phase == "failed":
        code = state.error.code if state.error else "failed"
        message = state.error.message if state.error else "the device reports phase 'failed'"
        return _move(row, Progress(FAILED, state.phase, code, message))
    if state.phase in WORKING_PHASES:
        return _move(row, Progress(IN_PROGRESS, state.phase))
    return None


def progress_from_event(row: Row, event: Event) -> Progress | None:
    """The row's new status after ``event`` (only events naming this deployment count)."""
    if event.deployment_id != row.deployment_id:
        return None
    if event.type in FAILURE_EVENTS:
        code = event.code or event.type
        return _move(row, Progress(FAILED, "failed", code, event.message or event.type))
    if event.type == "update_started":
        return _move(row, Progress(IN_PROGRESS, "downloading"))
    if (
        event.type == "committed"
        and event.bundle is not None
        and event.bundle.manifest_sha256 == row.target_sha256
    ):
        return _move(row, Progress(SUCCEEDED, "idle"))
    return None


def apply(row: Row, progress: Progress | None) -> Row:
    """The row after ``progress`` (for folding several reports of one batch in order)."""
    if progress is None:
        return row
    return Row(row.deployment_id, row.target_sha256, progress.status, progress.phase)


def deployment_status(counts: dict[str, int]) -> str:
    """``in_progress`` while any device is open, then ``completed`` if every device
    succeeded, ``failed`` if any failed, else ``superseded``; ``empty`` with no devices."""
    if not any(counts.values()):
        return "empty"
    if counts.get(PENDING, 0) or counts.get(IN_PROGRESS, 0):
        return "in_progress"
    if counts.get(FAILED, 0):
        return "failed"
    if counts.get(SUPERSEDED, 0):
        return "superseded"
    return "completed"
