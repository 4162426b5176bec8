"""The capture tick: publishes devices' capture sets and finishes captures that are done.

Every ``capture_tick_s`` (and at once when an API call wakes it) each replica:

1. marks acknowledged capture sets published (``published_version``), and the
   captures they listed as notified;
2. finishes captures that expired or that every device is done with, which changes
   their devices' sets;
3. publishes, retained, every set whose version the broker has not acknowledged,
   rebuilt from the tables (complete and idempotent: two replicas publishing the same
   set cost a duplicate, nothing more). A set sent and not acknowledged is sent again
   after ``republish_after_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Protocol

from sqlalchemy.orm import Session

from controller.services.captures import (
    capture_set,
    finish_captures,
    mark_published,
    pending_sets,
)

log = logging.getLogger(__name__)


class CommandPublisher(Protocol):
    def publish_command(
        self, device_id: str, payload: bytes, on_ack: Callable[[], None] | None = None
    ) -> None: ...


class CaptureWorker:
    def __init__(
        self,
        sessions: Callable[[], Session],
        publisher: CommandPublisher,
        *,
        api_url: str,
        tick_s: float = 1.0,
        republish_after_s: float = 10.0,
        batch: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._api_url = api_url
        self._tick_s = tick_s
        self._republish_after_s = republish_after_s
        self._batch = batch
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # (device, version, capture ids) acknowledged by the broker (paho's thread appends).
        self._acked: list[tuple[str, int, tuple[str, ...]]] = []
        self._acked_lock = threading.Lock()
        # device -> (version, when) last sent and not yet acknowledged.
        self._sent: dict[str, tuple[int, float]] = {}

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgefleet-captures", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Tick now (a capture was created, canceled or uploaded)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick_once()
            except Exception:  # the loop boundary: log, keep ticking
                log.exception("capture tick failed; continuing")
            self._wake.wait(self._tick_s)
            self._wake.clear()

    def tick_once(self) -> int:
        """One tick; returns how many capture sets it published."""
        now = self._clock()
        when = datetime.fromtimestamp(now, timezone.utc)
        self._flush_acks(now)
        with self._sessions() as session:
            if finish_captures(session, when):
                session.commit()
        with self._sessions() as session:
            pending = pending_sets(session, limit=self._batch)
            outgoing = []
            for device_id, version in pending:
                sent = self._sent.get(device_id)
                if sent is not None and sent[0] == version:
                    if now - sent[1] < self._republish_after_s:
                        continue
                command = capture_set(session, device_id, now=when, api_url=self._api_url)
                ids = tuple(c.capture_id for c in command.captures)
                outgoing.append((device_id, version, ids, command.to_bytes()))
        waiting = {device_id for device_id, _ in pending}
        self._sent = {d: v for d, v in self._sent.items() if d in waiting}
        for device_id, version, ids, payload in outgoing:
            self._sent[device_id] = (version, now)

            def acked(entry: tuple[str, int, tuple[str, ...]] = (device_id, version, ids)) -> None:
                with self._acked_lock:
                    self._acked.append(entry)
                self._wake.set()

            try:
                self._publisher.publish_command(device_id, payload, acked)
            except Exception:  # stays pending: sent again after republish_after_s
                log.exception("%s: cannot publish its capture set", device_id)
        return len(outgoing)

    def _flush_acks(self, now: float) -> None:
        with self._acked_lock:
            acked, self._acked = self._acked, []
        if not acked:
            return
        with self._sessions() as session:
            for device_id, version, ids in acked:
                mark_published(session, device_id, version, ids, now)
            session.commit()
