"""A/B model slots and the small state file that names the active one.

Layout under the data dir::

    state.json             which slot is active, which is previous, what each holds
    slots/a/, slots/b/     manifest.dsse.json + blobs/<sha256> (a bundle directory)
    downloads/             blobs being fetched (<sha256>.part) or fetched (<sha256>)

Every write of ``state.json`` is temp file -> fsync -> ``os.replace`` -> fsync of the
directory, so a power cut leaves the old or the new state, never a torn one. A slot is
only named in the state after all of its files are in place and fsynced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from firmware_bundles.bundle_dir import BLOBS_DIR, ENVELOPE_NAME, atomic_write, fsync_dir

log = logging.getLogger(__name__)

SLOT_NAMES = ("a", "b")
STATE_SCHEMA = 1


@dataclass(frozen=True)
class SlotInfo:
    manifest_sha256: str
    name: str
    version: str
    release_counter: int


@dataclass(frozen=True)
class TrialRecord:
    """The active slot is on trial: what it has shown so far (persisted every window)."""

    slot: str
    started_at: float
    policy: dict[str, Any]
    generation: int = 0  # of the desired state that asked for this model
    boot_attempts: int = 1
    inferences: int = 0
    errors: int = 0
    latency_histogram: dict[int, int] = field(default_factory=dict)
    # The rollout that asked for this model: a roll back at boot, before any desired
    # state has arrived, still reports against it.
    deployment_id: str | None = None

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> TrialRecord:
        hist = {int(k): int(v) for k, v in raw.get("latency_histogram", {}).items()}
        return TrialRecord(**{**raw, "latency_histogram": hist})


@dataclass(frozen=True)
class AgentState:
    active: str | None = None
    previous: str | None = None
    slots: dict[str, SlotInfo] = field(default_factory=dict)
    # Highest release_counter ever activated: the anti-rollback floor.
    max_release_counter: int = 0
    trial: TrialRecord | None = None
    # (generation, manifest sha256) of a bundle rolled back after its trial: the same
    # desired state must not bring it back (only a newer generation may retry it).
    rejected: tuple[int, str] | None = None

    def slot_info(self, slot: str | None) -> SlotInfo | None:
        return None if slot is None else self.slots.get(slot)

    def spare(self) -> str:
        """The slot an update may overwrite: never the active one."""
        return next(s for s in SLOT_NAMES if s != self.active)

    def slot_holding(self, manifest_sha256: str) -> str | None:
        for slot, info in self.slots.items():
            if info.manifest_sha256 == manifest_sha256:
                return slot
        return None

    def to_json(self) -> bytes:
        data: dict[str, Any] = asdict(self)
        data["schema"] = STATE_SCHEMA
        return json.dumps(data, sort_keys=True, indent=1).encode()

    @staticmethod
    def from_json(data: bytes) -> AgentState:
        raw = json.loads(data)
        if raw.get("schema") != STATE_SCHEMA:
            raise ValueError(f"state schema {raw.get('schema')!r} unsupported")
        slots = {k: SlotInfo(**v) for k, v in raw.get("slots", {}).items() if k in SLOT_NAMES}
        active, previous = raw.get("active"), raw.get("previous")
        trial = TrialRecord.from_dict(raw["trial"]) if raw.get("trial") else None
        return AgentState(
            active=active if active in slots else None,
            previous=previous if previous in slots else None,
            slots=slots,
            max_release_counter=int(raw.get("max_release_counter", 0)),
            trial=trial if trial is not None and trial.slot == active else None,
            rejected=(int(raw["rejected"][0]), str(raw["rejected"][1]))
            if raw.get("rejected")
            else None,
        )


class SlotStore:
    """File-system side of the slots. One instance per agent data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.state_path = data_dir / "state.json"
        self.downloads = data_dir / "downloads"
        for slot in SLOT_NAMES:
            (data_dir / "slots" / slot).mkdir(parents=True, exist_ok=True)
        self.downloads.mkdir(parents=True, exist_ok=True)

    def slot_dir(self, slot: str) -> Path:
        return self.data_dir / "slots" / slot

    def load_state(self) -> AgentState:
        try:
            return AgentState.from_json(self.state_path.read_bytes())
        except FileNotFoundError:
            return AgentState()
        except (ValueError, TypeError, KeyError) as exc:
            # Atomic writes make this unreachable short of disk corruption; start clean
            # rather than crash-loop, and say so.
            log.error(
                "state file %s is unreadable (%s); starting with no model", self.state_path, exc
            )
            return AgentState()

    def save_state(self, state: AgentState) -> None:
        atomic_write(self.state_path, state.to_json())

    def install(self, slot: str, envelope: bytes, blobs: dict[str, Path]) -> None:
        """Move the verified ``blobs`` (sha256 -> downloaded file) into ``slot``.

        A slot has the bundle-directory layout (``manifest.dsse.json`` + ``blobs/``), so
        :func:`~firmware_bundles.bundle_dir.verify_bundle_dir` re-checks it on start.
        The slot is emptied first and the envelope written last: a slot without an
        envelope is incomplete and never activated.
        """
        target = self.slot_dir(slot)
        shutil.rmtree(target, ignore_errors=True)
        (target / BLOBS_DIR).mkdir(parents=True)
        for digest, source in blobs.items():
            with source.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(source, target / BLOBS_DIR / digest)
        fsync_dir(target / BLOBS_DIR)
        atomic_write(target / ENVELOPE_NAME, envelope)

    def activate(
        self, state: AgentState, slot: str, info: SlotInfo, trial: TrialRecord | None = None
    ) -> AgentState:
        """Make ``slot`` active (on ``trial`` if given) and the old active one previous.

        The anti-rollback floor only rises when a model *commits*: a model on trial
        may still be rolled back, and the previous one must stay installable.
        """
        slots = dict(state.slots)
        slots[slot] = info
        new = replace(
            state,
            active=slot,
            previous=state.active if state.active != slot else state.previous,
            slots=slots,
            trial=trial,
            max_release_counter=state.max_release_counter
            if trial is not None
            else max(state.max_release_counter, info.release_counter),
        )
        self.save_state(new)
        return new

    def reject(self, state: AgentState, generation: int, manifest_sha256: str) -> AgentState:
        new = replace(state, rejected=(generation, manifest_sha256))
        self.save_state(new)
        return new

    def commit(self, state: AgentState) -> AgentState:
        """End the trial of the active slot: it is now the known-good model."""
        info = state.slot_info(state.active)
        floor = max(state.max_release_counter, info.release_counter if info else 0)
        new = replace(state, trial=None, max_release_counter=floor)
        self.save_state(new)
        return new

    def save_trial(self, state: AgentState, trial: TrialRecord) -> AgentState:
        new = replace(state, trial=trial)
        self.save_state(new)
        return new

    def forget_slot(self, state: AgentState, slot: str) -> AgentState:
        """Drop ``slot`` from the state (its files are about to be overwritten)."""
        if slot not in state.slots:
            return state
        slots = {k: v for k, v in state.slots.items() if k != slot}
        new = replace(
            state,
            slots=slots,
            previous=None if state.previous == slot else state.previous,
            active=None if state.active == slot else state.active,
        )
        self.save_state(new)
        return new
