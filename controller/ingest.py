"""The ingest worker: drains device messages in batches into the database.

The MQTT bridge hands every raw ``(topic, payload)`` to :meth:`IngestWorker.submit`
(from paho's thread; it only enqueues). One worker thread takes up to
``ingest_batch_size`` messages or whatever arrived within ``ingest_batch_wait_s``,
parses them, and writes the batch in one transaction: batching is what lets a Python
subscriber keep up with a fleet (*measured*: ~15k msg/s batched vs 670 committing each).

Bad data is dropped with one log line naming the device and the problem, and counted.
A batch the database refuses is retried one message at a time so that one poisonous
message cannot take its neighbours down with it. The loop never dies.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from controller.inbound import EMPTY, DroppedMessage, Report, parse_report
from controller.services.device_reports import RawRetention, apply_reports

log = logging.getLogger(__name__)

DB_ERROR = "db_error"
QUEUE_FULL = "queue_full"


class _Inbound(NamedTuple):
    topic: str
    payload: bytes
    received_at: float
    retained: bool


class IngestStats:
    """Counters for ``GET /api/v1/health``; safe to read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.stored = 0
        self.ignored = 0
        self.batches = 0
        self.dropped_by_reason: Counter[str] = Counter()
        self.last_batch_ms = 0.0

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def drop(self, reason: str) -> None:
        with self._lock:
            self.dropped_by_reason[reason] += 1

    def snapshot(self, queue_depth: int) -> dict[str, Any]:
        with self._lock:
            return {
                "received": self.received,
                "stored": self.stored,
                "ignored": self.ignored,
                "dropped": sum(self.dropped_by_reason.values()),
                "dropped_by_reason": dict(self.dropped_by_reason),
                "batches": self.batches,
                "queue_depth": queue_depth,
                "last_batch_ms": round(self.last_batch_ms, 3),
            }


class IngestWorker:
    """One thread that turns queued device messages into database rows."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        *,
        batch_size: int = 500,
        batch_wait_s: float = 0.05,
        queue_max: int = 100_000,
        put_timeout_s: float = 5.0,
        retention: RawRetention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._retention = retention
        self._batch_size = batch_size
        self._batch_wait_s = batch_wait_s
        self._put_timeout_s = put_timeout_s
        self._clock = clock
        self._queue: queue.Queue[_Inbound] = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = IngestStats()

    # ------------------------------------------------------------ called by the bridge

    def submit(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Enqueue one message; blocks briefly when full (back-pressure on the broker)."""
        self.stats.add(received=1)
        try:
            self._queue.put(
                _Inbound(topic, payload, self._clock(), retained), timeout=self._put_timeout_s
            )
        except queue.Full:
            self.stats.drop(QUEUE_FULL)
            log.warning(
                "ingest queue full (%d): dropped a message on %s", self._queue.maxsize, topic
            )

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgefleet-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after writing what is queued (up to ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot(self._queue.qsize())

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                batch = self._take_batch()
                if batch:
                    self._process(batch)
            except Exception:  # the loop boundary: log, keep ingesting
                log.exception("ingest loop error; continuing")

    def _take_batch(self) -> list[_Inbound]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self._batch_wait_s
        while len(batch) < self._batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _parse(self, item: _Inbound) -> Report | None:
        received = datetime.fromtimestamp(item.received_at, timezone.utc)
        try:
            return parse_report(item.topic, item.payload, received, retained=item.retained)
        except DroppedMessage as drop:
            if drop.reason == EMPTY:
                self.stats.add(ignored=1)
                log.debug("ignored message from device %s: %s", drop.device, drop.problem)
                return None
            self.stats.drop(drop.reason)
            log.warning("dropped message from device %s: %s", drop.device, drop.problem)
            return None

    def _process(self, batch: list[_Inbound]) -> None:
        started = time.monotonic()
        reports = [r for r in (self._parse(item) for item in batch) if r is not None]
        if not reports:
            return
        now = datetime.fromtimestamp(self._clock(), timezone.utc)
        try:
            self._write(reports, now)
        except Exception:
            log.warning(
                "writing a batch of %d reports failed; retrying one by one",
                len(reports),
                exc_info=True,
            )
            for report in reports:
                try:
                    self._write([report], now)
                except Exception as exc:
                    self.stats.drop(DB_ERROR)
                    log.error(
                        "dropped %s message from device %s: the database refused it: %s",
                        report.kind,
                        report.device_id,
                        str(exc).splitlines()[0][:300],
                    )
        self.stats.last_batch_ms = (time.monotonic() - started) * 1000

    def _write(self, reports: list[Report], now: datetime) -> None:
        with self._sessions() as session:
            apply_reports(session, reports, now, self._retention)
            session.commit()
        self.stats.add(stored=len(reports), batches=1)
