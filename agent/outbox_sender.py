"""Send the outbox through the MQTT link, oldest first; delete what was delivered.

A message leaves the outbox only when the broker acknowledged it *and* somebody was
subscribed (an MQTT 5 PUBACK without "No matching subscribers"). When nobody is (the
controller not back yet after a broker restart), the message stays, and the sender
holds that kind of message (its topic) off and then probes with one at a time, backing
off up to ``hold_max_s``, until one is delivered; then that kind flows again. Other
kinds go on meanwhile: a topic nobody reads does not block the others.

Threads: :meth:`flush`, :meth:`settle` and :meth:`reconnected` run on the agent's worker
thread. The link's callbacks run on the network thread and only append to a deque: the
network thread touches no file (a simulated fleet shares one network thread, and a
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

log = logging.getLogger(__name__)


class TrackedLink(Protocol):
    def publish_tracked(
        self,
        kind: str,
        payload: bytes,
        on_ack: Callable[[], None],
        on_refused: Callable[[str], None],
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
        self._inflight: set[Path] = set()
        # (path, None) delivered, (path, reason) refused: appended on the network thread.
        self._outcomes: collections.deque[tuple[Path, str | None]] = collections.deque()
        self._held: dict[str, _Hold] = {}
        self.refusals = 0

    def held(self) -> list[str]:
        """The kinds nobody received lately, sent one at a time until somebody does."""
        return sorted(self._held)

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
            self._inflight.add(path)
            if hold is not None:
                hold.probe = path
            on_ack = partial(self._outcomes.append, (path, None))
            on_refused = partial(self._refused, path)
            if not self._link.publish_tracked(kind, payload, on_ack, on_refused):
                self._inflight.discard(path)
                if hold is not None:
                    hold.probe = None
                return  # disconnected: the next connect flushes

    def settle(self) -> None:
        """Apply what the broker answered: delete delivered messages, hold off after a
        refusal."""
        while True:
            try:
                path, refusal = self._outcomes.popleft()
            except IndexError:
                return
            self._inflight.discard(path)
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
            if hold is None:
                log.warning(
                    "%s: the broker did not deliver %s (%s): keeping the %s messages in the "
                    "outbox and trying one at a time",
                    self._device_id, path.name, refusal, kind,
                )  # fmt: skip
                hold = self._held[kind] = _Hold(self._hold_min_s, 0.0)
            elif not probe:
                continue  # sent before the hold began: it tells nothing new
            hold.until = self._clock() + hold.hold_s
            hold.hold_s = min(hold.hold_s * 2, self._hold_max_s)

    def reconnected(self) -> None:
        """A new connection: nothing is in flight on it, and a held kind is worth a
        probe at once."""
        self.settle()
        self._inflight.clear()
        for hold in self._held.values():
            hold.until, hold.probe = 0.0, None

    def _refused(self, path: Path, reason: str) -> None:
        self._outcomes.append((path, reason))
