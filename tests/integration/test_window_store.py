"""Roll-ups and retention on a real database (SQLite and PostgreSQL): a day of windows
shrinks to a row per device and bucket, sums stay exact, and a window re-sent after it
was rolled up is never counted twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from controller import window_merge as wm
from controller.db import create_schema, insert_ignoring_duplicates, make_engine, make_sessionmaker
from controller.inbound import Report
from controller.models import DriftWindow, TelemetryWindow
from controller.monitoring_models import DriftRollup, TelemetryRollup
from controller.services import device_reports
from controller.services.device_reports import RawRetention, apply_reports
from controller.services.window_store import (
    Query,
    drift_parts,
    drop_rolled_up,
    roll_up_batch,
    telemetry_parts,
)
from firmware_bundles.wire import BundleRef, Drift, Telemetry

SHA = "ab" * 32
BUNDLE = BundleRef(SHA, "clf", "1.0.0")
HOUR = 3600.0
T0 = 1_700_000_000.0 - (1_700_000_000.0 % HOUR)  # on a bucket edge


@pytest.fixture()
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    create_schema(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def telemetry(device: str, seq: int, end: float, count: int) -> Report:
    message = Telemetry(
        device_id=device, seq=seq, window_start=end - 10, window_end=end,
        inference_count=count, error_count=seq % 3, latency_p50_ms=None,
        latency_p95_ms=None, latency_p99_ms=None, bundle=BUNDLE,
        latency_histogram={100 + seq % 7: count},
    )  # fmt: skip
    return Report("telemetry", device, message, datetime.fromtimestamp(end, timezone.utc))


def drift(device: str, seq: int, end: float, counts: list[int]) -> Report:
    stats = {"counts": counts, "missing": 0, "n": sum(counts), "min": -1.0 * seq,
             "max": 1.0 * seq, "sum": 0.5 * seq, "sumsq": 2.0 * seq}  # fmt: skip
    message = Drift(device, seq, end - 10, end, BUNDLE, {"x[0]": stats})
    return Report("drift", device, message, datetime.fromtimestamp(end, timezone.utc))


def ingest(sessions: sessionmaker[Session], reports: list[Report], now: float) -> None:
    with sessions() as session:
        apply_reports(
            session,
            reports,
            datetime.fromtimestamp(now, timezone.utc),
            RawRetention(raw_s=HOUR, bucket_s=HOUR),
        )
        session.commit()


def totals(sessions: sessionmaker[Session], query: Query | None = None) -> dict[str, object]:
    query = query or Query()
    with sessions() as session:
        tele = list(telemetry_parts(session, query))
        drifts = list(drift_parts(session, query))
    return {
        "windows": sum(p.windows for p in tele),
        "inferences": sum(p.inference_count for p in tele),
        "errors": sum(p.error_count for p in tele),
        "histogram": wm.merge_histograms(p.histogram for p in tele),
        "drift_windows": sum(p.windows for p in drifts),
        "drift": wm.merge_features(p.features for p in drifts),
    }


def roll_all(sessions: sessionmaker[Session], now: float, batch: int = 100) -> int:
    rounds = 0
    while True:
        rounds += 1
        with sessions() as session:
            counts = roll_up_batch(
                session, now=now, raw_retention_s=HOUR, bucket_s=HOUR,
                retention_s=7 * 24 * HOUR, batch=batch,
            )  # fmt: skip
            session.commit()
        if not counts.more:
            return rounds


def count_rows(sessions: sessionmaker[Session], table: type) -> int:
    with sessions() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def test_a_day_of_windows_rolls_up_exactly_and_late_copies_count_once(
    sessions: sessionmaker[Session],
) -> None:
    devices = [f"dev-{i}" for i in range(3)]
    reports = []
    # 6 hours of 10-minute windows (36 per device), sent as they happen.
    for device in devices:
        for seq in range(36):
            end = T0 + (seq + 1) * 600
            reports += [telemetry(device, seq, end, 10 + seq), drift(device, seq, end, [seq, 1, 2])]
    ingest(sessions, reports, now=T0 + 6 * HOUR)
    before = totals(sessions)
    assert before["windows"] == before["drift_windows"] == 108

    # Eight hours in: everything older than one hour is rolled up into hourly buckets.
    assert roll_all(sessions, now=T0 + 8 * HOUR, batch=40) > 1  # several batches
    assert totals(sessions) == before
    assert count_rows(sessions, TelemetryWindow) == 0 and count_rows(sessions, DriftWindow) == 0
    assert count_rows(sessions, TelemetryRollup) == 3 * 6  # (T0, T0+1h] ... (T0+5h, T0+6h]
    assert count_rows(sessions, DriftRollup) == 3 * 6

    # A device re-sends windows long after (an outbox resend): nothing changes.
    late = [telemetry("dev-1", 5, T0 + 6 * 600, 15), drift("dev-1", 5, T0 + 6 * 600, [5, 1, 2])]
    ingest(sessions, late, now=T0 + 9 * HOUR)
    assert count_rows(sessions, TelemetryWindow) == 0 and count_rows(sessions, DriftWindow) == 0
    assert totals(sessions) == before

    # A copy that slipped into the raw table anyway (ingest without the check) is
    # dropped by the next roll-up instead of being added.
    ingest_unchecked = late
    with sessions() as session:
        apply_reports(
            session, ingest_unchecked, datetime.fromtimestamp(T0 + 9 * HOUR, timezone.utc)
        )
        session.commit()
    assert totals(sessions)["windows"] == 109  # counted twice for now...
    with sessions() as session:
        counts = roll_up_batch(
            session, now=T0 + 9 * HOUR, raw_retention_s=HOUR, bucket_s=HOUR,
            retention_s=7 * 24 * HOUR, batch=100,
        )  # fmt: skip
        session.commit()
    assert counts.duplicates == 2 and counts.rolled_up == 0
    assert totals(sessions) == before  # ...and once again after the roll-up

    # A genuinely new window that arrives late (the device was offline) is added.
    new = [telemetry("dev-2", 99, T0 + 6 * 600, 7)]
    ingest(sessions, new, now=T0 + 9 * HOUR)
    roll_all(sessions, now=T0 + 9 * HOUR)
    after = totals(sessions)
    assert after["windows"] == 109 and after["inferences"] == before["inferences"] + 7  # type: ignore[operator]

    # Queries by device and time range see roll-ups at bucket granularity.
    hour2 = totals(sessions, Query(devices=["dev-0"], since=T0 + HOUR, until=T0 + 2 * HOUR))
    assert hour2["windows"] == 6  # the windows of dev-0 ending in (T0+1h, T0+2h]

    # Past the retention, roll-ups go.
    with sessions() as session:
        counts = roll_up_batch(
            session, now=T0 + 6 * HOUR + 7 * 24 * HOUR + 1, raw_retention_s=HOUR,
            bucket_s=HOUR, retention_s=7 * 24 * HOUR, batch=100,
        )  # fmt: skip
        session.commit()
    assert counts.expired == 2 * 3 * 6
    assert count_rows(sessions, TelemetryRollup) == count_rows(sessions, DriftRollup) == 0


def test_a_window_that_cannot_add_up_is_dropped_and_the_roll_up_goes_on(
    sessions: sessionmaker[Session],
) -> None:
    # Valid on the wire, but one window has another bucket count than its neighbours:
    # a broken (or hostile) agent. Before, it made every roll-up pass fail for good.
    reports = [
        drift("dev-0", 1, T0 + 600, [1, 2, 3]),
        drift("dev-0", 2, T0 + 1200, [4, 5]),
        drift("dev-0", 3, T0 + 1800, [1, 1, 1]),
        telemetry("dev-0", 1, T0 + 600, 9),
    ]
    ingest(sessions, reports, now=T0 + 1800)
    assert roll_all(sessions, now=T0 + 3 * HOUR) == 1
    assert count_rows(sessions, DriftWindow) == 0 and count_rows(sessions, TelemetryWindow) == 0
    after = totals(sessions)
    assert after["drift_windows"] == 2 and after["drift"]["x[0]"]["counts"] == [2, 3, 4]
    assert after["inferences"] == 9


@pytest.mark.postgres
def test_a_late_copy_racing_a_roll_up_pass_is_counted_once(postgres_url: str) -> None:
    """The ingest looks for a roll-up holding its (old) window, finds none, and only then
    inserts it raw; a roll-up pass that took the original in between must not leave
    both counted. The pass waits for the ingest (an advisory lock) instead."""
    engine = make_engine(postgres_url)
    create_schema(engine)
    sessions = make_sessionmaker(engine)
    try:
        ingest(sessions, [telemetry("dev-0", seq, T0 + (seq + 1) * 600, 10) for seq in range(6)],
               now=T0 + HOUR)  # fmt: skip
        before = totals(sessions)
        late = telemetry("dev-0", 2, T0 + 3 * 600, 10)  # an outbox resend of window 2
        copy = device_reports._telemetry_row(late.message, late.received_at)  # type: ignore[arg-type]
        with sessions() as ingesting:
            kept = drop_rolled_up(ingesting, TelemetryRollup, [copy], cutoff=T0 + 2 * HOUR,
                                  bucket_s=HOUR)  # fmt: skip
            assert kept == [copy]  # not rolled up yet: it goes in raw

            done = threading.Event()

            def roll_up() -> None:
                with sessions() as session:
                    roll_up_batch(session, now=T0 + 3 * HOUR, raw_retention_s=HOUR,
                                  bucket_s=HOUR, retention_s=7 * 24 * HOUR, batch=100)  # fmt: skip
                    session.commit()
                done.set()

            roller = threading.Thread(target=roll_up)
            roller.start()
            assert not done.wait(1.0), "the roll-up pass committed under the ingest's feet"
            ingesting.execute(insert_ignoring_duplicates(ingesting, TelemetryWindow), kept)
            ingesting.commit()
        roller.join(30)
        assert done.is_set()
        assert count_rows(sessions, TelemetryWindow) == 0
        assert totals(sessions) == before  # window 2 once, rolled up
    finally:
        engine.dispose()
