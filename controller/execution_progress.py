"""How a device's reports move its execution of a rollout: pure, no database, no clock.

The ingest worker calls these for every state and event a device sends and writes the
returned :class:`Progress` (or nothing). Reports arrive late, twice and out of order
(QoS 1 redelivery, retained replays, a state overtaking an event), so every move is
checked against the row's current state:

- The device runs the target bundle -> ``on_trial``, or ``committed`` once off trial.
- ``update_failed`` naming this rollout, or a state of this rollout in phase ``failed``
  -> ``failed`` with the device's code and message; ``rolled_back`` -> ``rolled_back``.
- Working phases move forward only: ``downloading`` -> ``verifying`` (installing,
  verifying) -> ``installed`` (health check) -> ``on_trial``.
- A ``queued`` row moves only when the controller notifies it; ``committed``,
  ``rolled_back`` and ``canceled`` rows never move; ``failed`` may become
  ``rolled_back`` (the event overtook by the state) or ``committed`` (the device got
  there after all), as may ``timed_out``: a device that comes back late still converges.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.rollout_engine import (
    CANCELED,
    COMMITTED,
    DOWNLOADING,
    FAILED,
    INSTALLED,
    NOTIFIED,
    ON_TRIAL,
    QUEUED,
    ROLLED_BACK,
    TIMED_OUT,
    VERIFYING,
)
from firmware_bundles.wire import Event, State

PHASE_STATES = {
    "downloading": DOWNLOADING,
    "installing": VERIFYING,
    "verifying": VERIFYING,
    "health_check": INSTALLED,
    "trial": ON_TRIAL,
}
_RANK = {NOTIFIED: 1, DOWNLOADING: 2, VERIFYING: 3, INSTALLED: 4, ON_TRIAL: 5}
_FINAL_MOVES = {
    FAILED: frozenset({ROLLED_BACK, COMMITTED}),
    TIMED_OUT: frozenset({COMMITTED, FAILED, ROLLED_BACK}),
}


@dataclass(frozen=True)
class Row:
    """What the rules need to know about one device's execution of one rollout."""

    rollout_id: str
    target_sha256: str
    state: str


@dataclass(frozen=True)
class Progress:
    state: str
    reason_code: str | None = None
    reason_message: str | None = None


def _move(row: Row, new: Progress) -> Progress | None:
    """Apply the ordering rules; ``None`` when the row does not change."""
    old = row.state
    if old == new.state:
        return None
    if old in (QUEUED, COMMITTED, ROLLED_BACK, CANCELED):
        return None
    if old in _FINAL_MOVES:
        return new if new.state in _FINAL_MOVES[old] else None
    # old is in progress: forward through the working states, or to any final state.
    if new.state in _RANK:
        return new if _RANK[new.state] > _RANK[old] else None
    return new


def progress_from_state(row: Row, state: State) -> Progress | None:
    """The row's new state after ``state`` (the device's report of where it is)."""
    active = state.active
    if active is not None and active.manifest_sha256 == row.target_sha256:
        return _move(row, Progress(ON_TRIAL if state.on_trial else COMMITTED))
    if state.deployment_id != row.rollout_id:
        return None  # a report about another desired state
    if state.phase == "failed":
        code = state.error.code if state.error else "failed"
        message = state.error.message if state.error else "the device reports phase 'failed'"
        return _move(row, Progress(FAILED, code, message))
    working = PHASE_STATES.get(state.phase)
    return None if working is None else _move(row, Progress(working))


def progress_from_event(row: Row, event: Event) -> Progress | None:
    """The row's new state after ``event`` (only events naming this rollout count)."""
    if event.deployment_id != row.rollout_id:
        return None
    if event.type == "update_failed":
        return _move(row, Progress(FAILED, event.code or "failed", event.message or event.type))
    if event.type == "rolled_back":
        return _move(
            row, Progress(ROLLED_BACK, event.code or "rolled_back", event.message or event.type)
        )
    if event.type == "update_started":
        return _move(row, Progress(DOWNLOADING))
    if (
        event.type == "committed"
        and event.bundle is not None
        and event.bundle.manifest_sha256 == row.target_sha256
    ):
        return _move(row, Progress(COMMITTED))
    return None


def apply(row: Row, progress: Progress | None) -> Row:
    """The row after ``progress`` (for folding several reports of one batch in order)."""
    return row if progress is None else Row(row.rollout_id, row.target_sha256, progress.state)
