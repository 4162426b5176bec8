"""The rollout tick: advances every running rollout, one replica per rollout at a time.

Every ``rollout_tick_s`` each controller replica runs :meth:`RolloutWorker.tick_once`:

1. For each running or paused rollout whose lease is free, expired or its own, it takes
   the row with ``SELECT ... FOR UPDATE SKIP LOCKED`` (a replica mid-tick on it is
   skipped, not waited for) and extends the lease (``lease_owner``, ``lease_until``):
   while the owner is alive no other replica advances that rollout; when it dies,
   another takes over once the lease expires. On SQLite (one replica) the lease UPDATE
   is the transaction's first write, which takes the database's write lock for it.
2. It reads the executions, refreshes the gate figures (at most every
   ``gate_interval_s``), asks :func:`controller.rollout_engine.plan_tick` what to do,
   writes the plan (:func:`~controller.services.rollout_execution.apply_plan`) and
   commits. Then it publishes the desired states the plan decided.
3. Broker acknowledgements mark execution rows published; rows still unpublished
   ``republish_after_s`` later (lost in a crash between commit and publish, or a broker
   away) are published again. A desired state is complete and idempotent, so a
   duplicate costs nothing.

The database holds all the state: kill a controller mid-rollout and any replica (or the
same one restarted) carries on from the rows, counting no device twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from controller.drift_references import DriftReferences
from controller.models import Device, Rollout, RolloutDevice
from controller.rollout_engine import GateMetrics, gate_values, plan_tick
from controller.rollout_policy import policy_from_dict
from controller.services.rollout_execution import (
    Outgoing,
    apply_plan,
    desired_for,
    engine_state,
    execution_rows,
    to_exec,
)
from controller.services.rollout_gates import (
    GateSettings,
    gate_metrics,
    metrics_from_dict,
    metrics_to_dict,
)
from firmware_bundles.wire import Desired

log = logging.getLogger(__name__)

ACTIVE = ("running", "paused")


class DesiredPublisher(Protocol):
    def publish_desired(
        self, device_id: str, desired: Desired, on_ack: Callable[[], None] | None = None
    ) -> None: ...


@dataclass(frozen=True)
class WorkerSettings:
    replica_id: str
    blob_base_url: str
    tick_s: float = 1.0
    lease_s: float = 15.0
    gate_interval_s: float = 5.0
    republish_after_s: float = 10.0
    gates: GateSettings = GateSettings()
    max_rollouts_per_tick: int = 100


class RolloutWorker:
    """One per controller replica; ``start()`` runs the tick on a thread of its own."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        publisher: DesiredPublisher,
        settings: WorkerSettings,
        *,
        references: DriftReferences | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._references = references  # bundles' drift references, for drift gates
        self._publisher = publisher
        self.settings = settings
        self._clock = clock
        self._acked: list[tuple[int, str]] = []
        self._acked_lock = threading.Lock()
        self._republished: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.errors = 0

    @property
    def actor(self) -> str:
        return f"controller:{self.settings.replica_id}"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgefleet-rollouts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick_once()
            except Exception:  # the loop boundary: log, keep ticking
                self.errors += 1
                log.exception("rollout tick failed; continuing")
            self._stop.wait(self.settings.tick_s)

    # ------------------------------------------------------------ one tick

    def tick_once(self) -> int:
        """Advance every rollout this replica may; returns how many it advanced."""
        now = self._clock()
        self.flush_acks(now)
        advanced = 0
        for rollout_id in self._candidates(now):
            try:
                if self._advance(rollout_id, now):
                    advanced += 1
            except Exception:
                self.errors += 1
                log.exception("rollout %s: tick failed; the next tick retries", rollout_id)
        self.republish(now)
        self.ticks += 1
        return advanced

    def _lease_free(self, now: float) -> sa.ColumnElement[bool]:
        return sa.or_(
            Rollout.lease_owner == self.settings.replica_id,
            Rollout.lease_until.is_(None),
            Rollout.lease_until < now,
        )

    def _candidates(self, now: float) -> list[str]:
        with self._sessions() as session:
            query = (
                sa.select(Rollout.id)
                .where(Rollout.status.in_(ACTIVE), self._lease_free(now))
                .order_by(Rollout.created)
                .limit(self.settings.max_rollouts_per_tick)
            )
            return list(session.scalars(query))

    def _advance(self, rollout_id: str, now: float) -> bool:
        # Gate figures first, outside the write transaction: they read telemetry, and
        # on SQLite a write transaction holds the one write lock ingest also needs.
        with self._sessions() as session:
            rollout = session.get(Rollout, rollout_id)
            if rollout is None or rollout.status not in ACTIVE:
                return False
            due = (
                rollout.gates_at is None or now - rollout.gates_at >= self.settings.gate_interval_s
            )
            fresh = None
            if due and rollout.started_at is not None:
                fresh = gate_metrics(
                    session,
                    rollout,
                    policy_from_dict(rollout.policy),
                    self.settings.gates,
                    self._references,
                )
        with self._sessions() as session:
            claimed = session.scalar(
                sa.select(Rollout.id)
                .where(Rollout.id == rollout_id, Rollout.status.in_(ACTIVE), self._lease_free(now))
                .with_for_update(skip_locked=True)
            )
            if claimed is None:
                return False  # another replica holds it
            took = session.execute(
                sa.update(Rollout)
                .where(Rollout.id == rollout_id, self._lease_free(now))
                .values(
                    lease_owner=self.settings.replica_id, lease_until=now + self.settings.lease_s
                )
            )
            if took.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                return False
            rollout = session.scalars(
                sa.select(Rollout)
                .where(Rollout.id == rollout_id)
                .options(selectinload(Rollout.bundle))
            ).one()
            outgoing = self._plan_and_apply(session, rollout, now, fresh)
            session.commit()
        self._publish(outgoing)
        return True

    def _plan_and_apply(
        self, session: Session, rollout: Rollout, now: float, fresh: GateMetrics | None
    ) -> list[Outgoing]:
        policy = policy_from_dict(rollout.policy)
        state = engine_state(rollout)
        if rollout.started_at is None and rollout.status == "running":
            rollout.started_at = now
        devices = [to_exec(r) for r in execution_rows(session, rollout.id)]
        if fresh is not None:
            metrics = fresh
            rollout.gates_at = now
        else:
            metrics = metrics_from_dict(rollout.gates)
        plan = plan_tick(policy, state, devices, metrics, now)
        outgoing = apply_plan(
            session,
            rollout,
            policy,
            plan,
            now=now,
            actor=self.actor,
            blob_base_url=self.settings.blob_base_url,
        )
        rollout.gates = {**metrics_to_dict(metrics), **gate_values(policy, devices, metrics)}
        return outgoing

    # ------------------------------------------------------------ publishing

    def publish(self, outgoing: list[Outgoing]) -> None:
        """Publish desired states decided by a committed transaction (API actions too)."""
        self._publish(outgoing)

    def _publish(self, outgoing: list[Outgoing]) -> None:
        for item in outgoing:
            sha = item.desired.bundle.manifest_sha256 if item.desired.bundle else ""

            def acked(row_id: int = item.row_id, sha: str = sha) -> None:
                with self._acked_lock:
                    self._acked.append((row_id, sha))

            try:
                self._publisher.publish_desired(item.device_id, item.desired, acked)
            except Exception:  # the row stays unpublished; the sweep publishes it again
                log.exception("%s: cannot publish desired state", item.device_id)

    def flush_acks(self, now: float) -> None:
        """Mark acknowledged desired states published (unless changed since)."""
        with self._acked_lock:
            acked, self._acked = self._acked, []
        if not acked:
            return
        by_sha: dict[str, list[int]] = defaultdict(list)
        for row_id, sha in acked:
            by_sha[sha].append(row_id)
            self._republished.pop(row_id, None)
        with self._sessions() as session:
            for sha, ids in by_sha.items():
                session.execute(
                    sa.update(RolloutDevice)
                    .where(RolloutDevice.id.in_(ids), RolloutDevice.desired_sha256 == sha)
                    .where(RolloutDevice.published_at.is_(None))
                    .values(published_at=now)
                )
            session.commit()

    def republish(self, now: float, limit: int = 1000) -> int:
        """Publish again what was decided but never acknowledged; returns how many."""
        cutoff = now - self.settings.republish_after_s
        self._republished = {k: v for k, v in self._republished.items() if v > cutoff}
        with self._sessions() as session:
            query = (
                sa.select(RolloutDevice, Device.generation, Device.rollout_id)
                .join(Device, Device.id == RolloutDevice.device_id)
                .where(RolloutDevice.published_at.is_(None))
                .where(RolloutDevice.desired_sha256.is_not(None))
                .where(RolloutDevice.updated_at < cutoff)
                .order_by(RolloutDevice.id)
                .limit(limit)
            )
            pending = list(session.execute(query))
            rollouts: dict[str, Rollout] = {}
            outgoing: list[Outgoing] = []
            for row, generation, current in pending:
                if self._republished.get(row.id, 0.0) > cutoff:
                    continue
                if current != row.rollout_id:
                    continue  # another rollout has the device now
                if row.rollout_id not in rollouts:
                    rollouts[row.rollout_id] = session.scalars(
                        sa.select(Rollout)
                        .where(Rollout.id == row.rollout_id)
                        .options(selectinload(Rollout.bundle))
                    ).one()
                desired = desired_for(
                    rollouts[row.rollout_id], row, generation, self.settings.blob_base_url
                )
                if desired is not None:
                    outgoing.append(Outgoing(row.id, row.device_id, desired))
                    self._republished[row.id] = now
        if outgoing:
            log.info("re-publishing %d desired state(s) never acknowledged", len(outgoing))
            self._publish(outgoing)
        return len(outgoing)
