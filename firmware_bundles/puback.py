"""Match a broker's acknowledgements (PUBACK) to the publishes they answer.

Shared by the agent's and the controller's MQTT adapters. paho tells us a publish's
message id only when ``publish()`` returns, and the PUBACK may arrive on paho's network
thread before that: such an "early" acknowledgement is held until the publish registers.
It is held for ``early_ttl_s`` only. paho re-sends what was in flight when a connection
dropped and its PUBACK then finds nobody waiting (the waiting list is forgotten at a
disconnect, the owner publishes again); held forever, it would acknowledge whichever
later publish happens to reuse the 16-bit message id, which was never delivered.

MQTT 5 gives every PUBACK a reason code. Below 0x80 the broker took the message, but
0x10 "No matching subscribers" means nobody received it: for a message that must reach
the controller (a telemetry window) that is no delivery at all. A publish registered with
``on_refused`` hears about 0x10 and about every refusal (0x80 and up); one without it is
acknowledged by any code below 0x80 (a retained message is stored even when nobody
listens), and a refusal is only logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10
FIRST_REFUSAL = 0x80
# Refusals about the message itself: sending it again can never succeed.
TOPIC_NAME_INVALID, PACKET_TOO_LARGE, PAYLOAD_FORMAT_INVALID = 0x90, 0x95, 0x99
NEVER_ACCEPTED = frozenset({TOPIC_NAME_INVALID, PACKET_TOO_LARGE, PAYLOAD_FORMAT_INVALID})

OnAck = Callable[[], None]
OnRefused = Callable[[int, str], None]


@dataclass(frozen=True)
class _Waiting:
    on_ack: OnAck | None
    on_refused: OnRefused | None


@dataclass(frozen=True)
class _Early:
    at: float
    code: int
    reason: str


class PubackTracker:
    """Callbacks waiting for the PUBACK of each message id; thread-safe.

    Callbacks run outside the lock, on the thread that completes the match (paho's
    network thread, or the publishing thread for an early acknowledgement).
    """

    def __init__(
        self, *, early_ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._early_ttl_s = early_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[int, _Waiting] = {}
        self._early: dict[int, _Early] = {}

    def expect(
        self, mid: int, on_ack: OnAck | None = None, on_refused: OnRefused | None = None
    ) -> None:
        """Wait for ``mid``'s PUBACK (every publish registers, callbacks or not)."""
        waiting = _Waiting(on_ack, on_refused)
        with self._lock:
            early = self._early.pop(mid, None)
            if early is not None and self._clock() - early.at > self._early_ttl_s:
                early = None  # an old re-send's PUBACK, not this publish's
            if early is None:
                self._waiting[mid] = waiting
        if early is not None:
            _deliver(mid, waiting, early.code, early.reason)

    def settle(self, mid: int, code: int, reason: str) -> None:
        """A PUBACK for ``mid`` with reason ``code`` (0 under MQTT 3.1.1) arrived."""
        with self._lock:
            waiting = self._waiting.pop(mid, None)
            if waiting is None:
                now = self._clock()
                if len(self._early) >= 1024:
                    cutoff = now - self._early_ttl_s
                    self._early = {m: e for m, e in self._early.items() if e.at >= cutoff}
                self._early[mid] = _Early(now, code, reason)
                return
        _deliver(mid, waiting, code, reason)

    def forget(self) -> None:
        """The connection dropped: nothing waiting will be acknowledged on it."""
        with self._lock:
            self._waiting.clear()
            self._early.clear()

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)


def _deliver(mid: int, waiting: _Waiting, code: int, reason: str) -> None:
    refused = code >= FIRST_REFUSAL or (
        code == NO_MATCHING_SUBSCRIBERS and waiting.on_refused is not None
    )
    try:
        if not refused:
            if waiting.on_ack is not None:
                waiting.on_ack()
        elif waiting.on_refused is not None:
            waiting.on_refused(code, reason)
        else:
            log.warning("the broker refused message %d: %s", mid, reason)
    except Exception:  # never let an owner's error escape into paho's loop
        log.exception("acknowledgement callback for message %d failed", mid)
