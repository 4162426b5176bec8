"""Fleet monitoring jobs on a thread of each replica: roll-ups, drift checks, webhooks.

- **Roll-up and retention** every ``rollup_interval_s``
  (:func:`controller.services.window_store.roll_up_batch`, a batch per transaction);
- **drift check** every ``drift_check_interval_s``
  (:func:`controller.services.drift_alerts.run_drift_check`);
- **webhook deliveries** that are due, every tick (:func:`controller.webhooks.deliver_due`).

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

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
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
        try:
            self.deliver()
        except Exception:
            self.errors += 1
            log.exception("webhook deliveries failed; retrying on the next tick")

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

    def roll_up(self, now: float) -> RollupCounts:
        s = self.settings
        total = RollupCounts()
        for _ in range(MAX_ROLLUP_BATCHES):
            with self._sessions() as session:
                counts = roll_up_batch(
                    session, now=now, raw_retention_s=s.telemetry_raw_retention_s,
                    bucket_s=s.telemetry_bucket_s, retention_s=s.telemetry_retention_s,
                    batch=s.rollup_batch,
                )  # fmt: skip
                extend_lease(session, ROLLUP, self.replica_id, self._clock() + s.monitoring_lease_s)
                session.commit()
            total.add(counts)
            if not counts.more or self._stop.is_set():
                break
        total.more = False
        if total.rolled_up or total.expired:
            log.info(
                "roll-up: %d windows into %d rows, %d repeats dropped, %d rows expired",
                *(total.rolled_up, total.rollups_written, total.duplicates, total.expired),
            )
        return total

    def check_drift(self, now: float) -> Any:
        with self._sessions() as session:
            summary = run_drift_check(session, self._references, self.settings, now)
            session.commit()
        return summary

    def deliver(self) -> int:
        if not self.settings.alert_webhooks or self._client is None:
            return 0
        with self._sessions() as session:
            return deliver_due(
                session, self._client, self.settings, owner=self.replica_id, clock=self._clock
            )
