"""Send the outbox through the MQTT link, oldest first; delete what was delivered.

A message leaves the outbox only when the broker acknowledged it *and* somebody was
subscribed (an MQTT 5 PUBACK without "No matching subscribers"). When nobody is (the
controller not back yet after a broker restart), the message stays, and the sender
holds that kind of message (its topic) off and then probes with one at a time, backing
off up to ``hold_max_s``, until one is delivered; then that kind flows again. Other
kinds go on meanwhile: a topic nobody reads does not block the others. A message the
broker refuses for what it is (topic name invalid, packet too large, payload format
invalid) can never be delivered: it is dropped, counted and logged, so that it does not
block its kind for ever.

A message in flight on a connection that has since dropped gets no PUBACK on it: the
sender notices the link's connection count change (on any call, without relying on a
reconnect event reaching the worker) and sends such messages again.

Threads: :meth:`flush` and :meth:`settle` run on the agent's worker thread. The link's
callbacks run on the network thread and only append to a deque: the network thread
touches no file (a simulated fleet shares one network thread, and a
syscall on it per acknowledgement starved it of the GIL).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from agent.outbox import Outbox
from firmware_bundles.puback import NEVER_ACCEPTED

log = logging.getLogger(__name__)


class TrackedLink(Protocol):
    generation: int  # connections made so far

    def publish_tracked(
        self,
        kind: str,
        payload: bytes,
        on_ack: Callable[[], None],
        on_refused: Callable[[int, str], None],
    ) -> bool: ...


@dataclass
class _Hold:
    """A kind of message nobody received lately: probe with one at a time."""

    hold_s: float
    until: float
    probe: Path | None = None


class OutboxSender:
    def __init__(
        self,
        outbox: Outbox,
        link: TrackedLink,
        *,
        device_id: str,
        max_inflight: int = 100,
        hold_min_s: float = 1.0,
        hold_max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self._link = link
        self._device_id = device_id
        self._max_inflight = max_inflight
        self._hold_min_s = hold_min_s
        self._hold_max_s = hold_max_s
        self._clock = clock
        # In flight: path -> the link's connection it was sent on.
        self._inflight: dict[Path, int] = {}
        self._generation = link.generation
        # (path, None) delivered, (path, (code, reason)) refused: appended on the
        # network thread.
        self._outcomes: collections.deque[tuple[Path, tuple[int, str] | None]] = collections.deque()
        self._held: dict[str, _Hold] = {}
        self.refusals = 0
        self.dropped = 0  # refused for what they are: never deliverable

    def held(self) -> list[str]:
        """The kinds nobody received lately, sent one at a time until somebody does."""
        return sorted(self._held.copy())

    def flush(self) -> None:
        """Send what is neither delivered nor in flight, oldest first."""
        self.settle()
        now = self._clock()
        for path in self.outbox.pending():
            if len(self._inflight) >= self._max_inflight:
                return
            if path in self._inflight:
                continue
            kind = path.suffix.lstrip(".")
            hold = self._held.get(kind)
            if hold is not None and (now < hold.until or hold.probe is not None):
                continue
            try:
                payload = path.read_bytes()
            except FileNotFoundError:
                continue  # dropped by the outbox's bounds meanwhile
            self._inflight[path] = self._generation
            if hold is not None:
                hold.probe = path
            on_ack = partial(self._outcomes.append, (path, None))
            on_refused = partial(self._refused, path)
            if not self._link.publish_tracked(kind, payload, on_ack, on_refused):
                self._inflight.pop(path, None)
                if hold is not None:
                    hold.probe = None
                return  # disconnected: the next connect flushes

    def settle(self) -> None:
        """Apply what the broker answered: delete delivered messages, hold off after a
        refusal; after a reconnect, send again what was in flight on the old
        connection."""
        self._follow_connection()
        while True:
            try:
                path, refusal = self._outcomes.popleft()
            except IndexError:
                return
            self._inflight.pop(path, None)
            kind = path.suffix.lstrip(".")
            hold = self._held.get(kind)
            probe = False
            if hold is not None and hold.probe == path:
                hold.probe, probe = None, True
            if refusal is None:
                self.outbox.ack(path)
                if self._held.pop(kind, None) is not None:
                    log.info("%s: %s messages are delivered again", self._device_id, kind)
                continue
            self.refusals += 1
            code, reason = refusal
            if code in NEVER_ACCEPTED:
                self.outbox.ack(path)  # delete: no broker will ever take it
                self.dropped += 1
                log.error("%s: the broker refuses %s for good (%s): dropped it",
                          self._device_id, path.name, reason)  # fmt: skip
                continue
            if hold is None:
                log.warning(
                    "%s: the broker did not deliver %s (%s): keeping the %s messages in the "
                    "outbox and trying one at a time",
                    self._device_id, path.name, reason, kind,
                )  # fmt: skip
                hold = self._held[kind] = _Hold(self._hold_min_s, 0.0)
            elif not probe:
                continue  # sent before the hold began: it tells nothing new
            hold.until = self._clock() + hold.hold_s
            hold.hold_s = min(hold.hold_s * 2, self._hold_max_s)

    def _follow_connection(self) -> None:
        """A new connection: nothing sent on an earlier one is in flight any more, and a
        held kind is worth a probe at once."""
        generation = self._link.generation
        if generation == self._generation:
            return
        self._generation = generation
        self._inflight = {p: g for p, g in self._inflight.items() if g == generation}
        for hold in self._held.values():
            if hold.probe not in self._inflight:
                hold.until, hold.probe = 0.0, None

    def _refused(self, path: Path, code: int, reason: str) -> None:
        self._outcomes.append((path, (code, reason)))
