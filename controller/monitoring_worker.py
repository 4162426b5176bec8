"""Fleet monitoring jobs on a thread of each replica: roll-ups, drift checks, webhooks.

- **Roll-up and retention** every ``rollup_interval_s``
  (:func:`controller.services.window_store.roll_up_batch`, a batch per transaction);
- **drift check** every ``drift_check_interval_s``
  (:func:`controller.services.drift_alerts.run_drift_check`);
- **webhook deliveries** that are due, on a thread of their own, one claimed at a time
  (:func:`controller.webhooks.deliver_due`).

With several replicas each periodic job runs on one of them at a time: its lease row
(:mod:`controller.leases`) is both the lock and the schedule. Deliveries are claimed
row by row. A job that fails is logged and tried again when next due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy.orm import Session

from controller.drift_references import DriftReferences
from controller.leases import extend_lease, lease_until, take_lease
from controller.monitoring_settings import MonitoringSettings
from controller.services.drift_alerts import run_drift_check
from controller.services.window_store import RollupCounts, roll_up_batch
from controller.webhooks import deliver_due

log = logging.getLogger(__name__)
ROLLUP, DRIFT_CHECK = "telemetry-rollup", "drift-check"
MAX_ROLLUP_BATCHES = 1000  # per run: a backlog is worked off over several runs
MAX_DELIVERIES_PER_ROUND = 100


class MonitoringWorker:
    def __init__(
        self,
        sessions: Callable[[], Session],
        references: DriftReferences,
        settings: MonitoringSettings,
        *,
        replica_id: str,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._references = references
        self.settings = settings
        self.replica_id = replica_id
        self._tick_s = tick_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._webhooks: threading.Thread | None = None
        self._client: httpx.Client | None = None
        self.errors = 0
        self.last: dict[str, Any] = {}  # job -> what its last run did
        # job -> when its lease may next be free: no database write before then.
        self._next_try: dict[str, float] = {}

    def start(self) -> None:
        self._stop.clear()
        self._client = httpx.Client(timeout=self.settings.webhook_timeout_s)
        self._thread = threading.Thread(target=self._run, name="edgefleet-monitoring", daemon=True)
        self._thread.start()
        self._webhooks = threading.Thread(
            target=self._deliver_loop, name="edgefleet-webhooks", daemon=True
        )
        self._webhooks.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in (self._thread, self._webhooks):
            if thread is not None:
                thread.join(timeout)
        self._thread = self._webhooks = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick_once()
            self._stop.wait(self._tick_s)

    def tick_once(self) -> None:
        """Run every job that is due (each failure logged, the others still run)."""
        for name, job, every in (
            (ROLLUP, self.roll_up, self.settings.rollup_interval_s),
            (DRIFT_CHECK, self.check_drift, self.settings.drift_check_interval_s),
        ):
            try:
                self._run_leased(name, job, every)
            except Exception:
                self.errors += 1
                log.exception("monitoring job %s failed; it runs again when next due", name)

    def _run_leased(self, name: str, job: Callable[[float], Any], every: float) -> None:
        started = self._clock()
        if started < self._next_try.get(name, 0.0):
            return  # not due: no write (on SQLite every write takes the one write lock)
        with self._sessions() as session:
            took = take_lease(
                session, name, self.replica_id, started, self.settings.monitoring_lease_s
            )
            until = lease_until(session, name)
            session.commit()
        if not took:  # another replica runs it; look again when its lease is up
            self._next_try[name] = min(until, started + every)
            return
        self._next_try[name] = started + every
        try:
            self.last[name] = job(started)
        finally:
            with self._sessions() as session:  # next due one interval after this start
                extend_lease(session, name, self.replica_id, started + every)
                session.commit()

    def _hold(self, name: str) -> bool:
        """Extend our lease on ``name`` (a long run); False when another replica has it."""
        with self._sessions() as session:
            kept = extend_lease(
                session, name, self.replica_id, self._clock() + self.settings.monitoring_lease_s
            )
            session.commit()
        if not kept:
            log.warning("lost the %s lease to another replica: stopping this run", name)
        return kept

    def roll_up(self, now: float) -> RollupCounts:
        s = self.settings
        total = RollupCounts()
        for _ in range(MAX_ROLLUP_BATCHES):
            if not self._hold(ROLLUP):
                break
            with self._sessions() as session:
                counts = roll_up_batch(
                    session, now=now, raw_retention_s=s.telemetry_raw_retention_s,
                    bucket_s=s.telemetry_bucket_s, retention_s=s.telemetry_retention_s,
                    batch=s.rollup_batch,
                )  # fmt: skip
                session.commit()
            total.add(counts)
            if not counts.more or self._stop.is_set():
                break
        total.more = False
        if total.rolled_up or total.expired or total.rejected:
            log.info(
                "roll-up: %d windows into %d rows, %d repeats and %d bad dropped, %d expired",
                *(total.rolled_up, total.rollups_written, total.duplicates, total.rejected),
                total.expired,
            )
        return total

    def check_drift(self, now: float) -> Any:
        return run_drift_check(
            self._sessions, self._references, self.settings, now, lambda: self._hold(DRIFT_CHECK)
        )

    # ------------------------------------------------------------ webhooks

    def _deliver_loop(self) -> None:
        """On a thread of its own: a slow or silent receiver must not hold up the jobs."""
        while not self._stop.is_set():
            try:
                busy = self.deliver()
            except Exception:
                self.errors += 1
                log.exception("webhook deliveries failed; retrying")
                busy = 0
            if not busy:
                self._stop.wait(self._tick_s)

    def deliver(self) -> int:
        """Attempt the due deliveries (one claimed at a time); how many were attempted."""
        if not self.settings.alert_webhooks or self._client is None:
            return 0
        attempted = 0
        for _ in range(MAX_DELIVERIES_PER_ROUND):
            with self._sessions() as session:
                done = deliver_due(
                    session, self._client, self.settings, owner=self.replica_id, clock=self._clock
                )
            if not done:
                break
            attempted += done
        return attempted
