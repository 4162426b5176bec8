"""Monitoring jobs on two replicas sharing one database: each periodic job runs on one
replica per interval, and a replica that dies holding a job loses it to the other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from controller.blobstore import BlobStore
from controller.db import create_schema, make_engine, make_sessionmaker
from controller.drift_references import DriftReferences
from controller.leases import take_lease
from controller.monitoring_settings import MonitoringSettings
from controller.monitoring_worker import DRIFT_CHECK, ROLLUP, MonitoringWorker

SETTINGS = MonitoringSettings(rollup_interval_s=60, drift_check_interval_s=30,
                              monitoring_lease_s=300)  # fmt: skip


@pytest.fixture()
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    create_schema(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ran(*workers: MonitoringWorker) -> list[tuple[str, str]]:
    """(replica, job) of the runs since the last call."""
    runs = sorted((w.replica_id, job) for w in workers for job in w.last)
    for w in workers:
        w.last.clear()
    return runs


def test_each_job_runs_once_per_interval_across_replicas(
    sessions: sessionmaker[Session], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    clock = Clock(1_000_000.0)
    refs = DriftReferences(BlobStore(tmp_path / "blobs"))
    a, b = (MonitoringWorker(sessions, refs, SETTINGS, replica_id=r, clock=clock) for r in "ab")
    a.tick_once()
    b.tick_once()
    assert ran(a, b) == [("a", DRIFT_CHECK), ("a", ROLLUP)]
    clock.now += 29
    a.tick_once()
    b.tick_once()
    assert ran(a, b) == []
    clock.now += 2  # the drift check is due again, the roll-up not yet
    b.tick_once()
    a.tick_once()
    assert ran(a, b) == [("b", DRIFT_CHECK)]
    clock.now += 30
    for _ in range(3):
        a.tick_once()
        b.tick_once()
    assert ran(a, b) == [("a", DRIFT_CHECK), ("a", ROLLUP)]

    # Replica "c" takes the roll-up and dies holding it: nobody runs it until its lease
    # (monitoring_lease_s) runs out; then a live replica does.
    clock.now += 60
    with sessions() as session:
        assert take_lease(session, ROLLUP, "c", clock.now, SETTINGS.monitoring_lease_s)
        session.commit()
    for step in (1, 100, 100):
        clock.now += step
        a.tick_once()
        b.tick_once()
        assert ROLLUP not in {job for _, job in ran(a, b)}
    clock.now += 100
    a.tick_once()
    b.tick_once()
    assert ("a", ROLLUP) in ran(a, b)
