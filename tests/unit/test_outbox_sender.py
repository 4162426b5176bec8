"""The outbox keeps what nobody received and probes for a subscriber; PUBACK matching
survives early and stale acknowledgements. A fake link here;
tests/integration/test_mqtt_delivery.py holds the real link and broker to the same
contract (acknowledged with a subscriber, refused without one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.outbox_sender import OutboxSender
from firmware_bundles.puback import NO_MATCHING_SUBSCRIBERS, PubackTracker


class FakeLink:
    """Records publishes; the test answers each one as the broker would."""

    def __init__(self) -> None:
        self.connected = True
        self.generation = 1
        self.sent: list[tuple[str, bytes, Callable[[], None], Callable[[int, str], None]]] = []

    def publish_tracked(
        self,
        kind: str,
        payload: bytes,
        on_ack: Callable[[], None],
        on_refused: Callable[[int, str], None],
    ) -> bool:
        if not self.connected:
            return False
        self.sent.append((kind, payload, on_ack, on_refused))
        return True

    def payloads(self) -> list[bytes]:
        return [payload for _, payload, _, _ in self.sent]

    def answer_all(self, delivered: bool) -> None:
        sent, self.sent = self.sent, []
        for _, _, on_ack, on_refused in sent:
            on_ack() if delivered else on_refused(0x10, "No matching subscribers")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Outbox, FakeLink, Clock, OutboxSender]:
    outbox = Outbox(tmp_path / "outbox", max_messages=1000, max_bytes=10_000_000, fsync=False)
    link, clock = FakeLink(), Clock()
    sender = OutboxSender(outbox, link, device_id="d", hold_min_s=1.0, hold_max_s=8.0, clock=clock)
    return outbox, link, clock, sender


def test_delivered_messages_leave_the_outbox_oldest_first(parts) -> None:  # type: ignore[no-untyped-def]
    outbox, link, _, sender = parts
    for i in range(3):
        outbox.put("telemetry", b"w%d" % i)
    sender.flush()
    assert link.payloads() == [b"w0", b"w1", b"w2"]
    sender.flush()  # in flight: not sent twice
    assert len(link.sent) == 3
    link.answer_all(delivered=True)
    sender.settle()
    assert outbox.pending() == []


def test_a_message_nobody_received_stays_and_is_probed_one_at_a_time(parts) -> None:  # type: ignore[no-untyped-def]
    outbox, link, clock, sender = parts
    for i in range(5):
        outbox.put("telemetry", b"w%d" % i)
    sender.flush()
    link.answer_all(delivered=False)  # the controller is not subscribed
    sender.flush()
    assert len(outbox.pending()) == 5, "a refused message must stay in the outbox"
    assert link.sent == [], "held off right after a refusal"
    assert sender.held() == ["telemetry"]

    waits = []
    for _ in range(5):  # probe, refused, wait twice as long (up to the cap)
        before = clock.now
        while not link.sent:
            clock.now += 0.25
            sender.flush()
        waits.append(clock.now - before)
        assert link.payloads() == [b"w0"], "one probe, the oldest"
        sender.flush()
        assert len(link.sent) == 1, "never a second probe in flight"
        link.answer_all(delivered=False)
        sender.settle()
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]

    clock.now += 8.0
    sender.flush()
    link.answer_all(delivered=True)  # somebody subscribed: the rest flows at once
    sender.flush()
    assert link.payloads() == [b"w1", b"w2", b"w3", b"w4"]
    link.answer_all(delivered=True)
    sender.settle()
    assert outbox.pending() == [] and sender.held() == []
    assert sender.refusals == 5 + 5  # the first batch and the five probes


def test_a_kind_nobody_reads_does_not_block_the_others(parts) -> None:  # type: ignore[no-untyped-def]
    outbox, link, clock, sender = parts
    outbox.put("telemetry", b"t0")
    outbox.put("drift", b"d0")
    sender.flush()
    _, _, _, refuse = link.sent[0]
    _, _, ack, _ = link.sent[1]
    link.sent.clear()
    refuse(0x10, "No matching subscribers")
    ack()
    outbox.put("drift", b"d1")
    outbox.put("telemetry", b"t1")
    sender.flush()
    assert [(k, p) for k, p, _, _ in link.sent] == [("drift", b"d1")]
    assert [p.read_bytes() for p in outbox.pending()] == [b"t0", b"d1", b"t1"]


def test_a_reconnect_resends_what_was_in_flight_and_probes_at_once(parts) -> None:  # type: ignore[no-untyped-def]
    outbox, link, _, sender = parts
    outbox.put("telemetry", b"w0")
    outbox.put("telemetry", b"w1")
    sender.flush()
    link.answer_all(delivered=False)
    sender.flush()
    assert link.sent == []
    link.generation += 1  # the broker came back: no wait for the hold to end
    sender.flush()
    assert link.payloads() == [b"w0"]
    link.sent.clear()  # the connection drops with the probe in flight (no PUBACK)
    link.generation += 1
    sender.flush()
    assert link.payloads() == [b"w0"], "sent again on the new connection"
    link.sent.clear()
    link.connected = False
    link.generation += 1
    sender.flush()  # disconnected: nothing goes, nothing is lost
    assert link.sent == [] and len(outbox.pending()) == 2


def test_a_full_window_of_messages_lost_with_a_connection_does_not_stall_the_outbox(parts) -> None:  # type: ignore[no-untyped-def]
    outbox, link, _, sender = parts
    for i in range(150):
        outbox.put("telemetry", b"w%d" % i)
    sender.flush()
    assert len(link.sent) == 100  # the in-flight cap
    link.sent.clear()  # dropped with the connection: no PUBACK will ever come
    link.generation += 1  # no reconnect event needed: the sender sees the new connection
    sender.flush()
    assert len(link.sent) == 100
    link.answer_all(delivered=True)
    sender.flush()
    link.answer_all(delivered=True)
    sender.settle()
    assert outbox.pending() == []


def test_a_message_no_broker_will_ever_take_is_dropped_not_retried_for_ever(parts) -> None:  # type: ignore[no-untyped-def]
    outbox, link, _, sender = parts
    outbox.put("drift", b"too big")
    outbox.put("drift", b"d1")
    sender.flush()
    _, _, _, refuse = link.sent[0]
    _, _, ack, _ = link.sent[1]
    refuse(0x95, "Packet too large")
    ack()
    sender.settle()
    assert outbox.pending() == [] and sender.dropped == 1 and sender.held() == []


def test_puback_tracker_matches_early_late_and_refused_acknowledgements() -> None:
    clock = Clock()
    tracker = PubackTracker(early_ttl_s=30.0, clock=clock)
    seen: list[str] = []
    tracker.expect(1, lambda: seen.append("ack 1"), lambda c, r: seen.append(f"refused 1: {r}"))
    tracker.settle(1, 0, "Success")
    tracker.settle(2, 0, "Success")  # the PUBACK beat the registration
    tracker.expect(2, lambda: seen.append("ack 2"))
    tracker.expect(3, lambda: seen.append("ack 3"), lambda c, r: seen.append(f"refused {c}: {r}"))
    tracker.settle(3, NO_MATCHING_SUBSCRIBERS, "No matching subscribers")
    # Retained, nobody listening: the broker stored it, which is all this publish needs.
    tracker.expect(4, lambda: seen.append("ack 4"))
    tracker.settle(4, NO_MATCHING_SUBSCRIBERS, "No matching subscribers")
    tracker.expect(5, lambda: seen.append("ack 5"))
    tracker.settle(5, 0x87, "Not authorized")  # logged, not acknowledged
    assert seen == ["ack 1", "ack 2", "refused 16: No matching subscribers", "ack 4"]


def test_a_stale_puback_never_acknowledges_a_later_publish_that_reuses_its_id() -> None:
    clock = Clock()
    tracker = PubackTracker(early_ttl_s=30.0, clock=clock)
    seen: list[str] = []
    tracker.expect(7, lambda: seen.append("old"))
    tracker.forget()  # the connection dropped; paho re-sends message 7 itself
    tracker.settle(7, 0, "Success")  # ... and its PUBACK finds nobody waiting
    clock.now += 3600  # 65,535 publishes later the id comes round again
    tracker.expect(7, lambda: seen.append("new"))
    assert seen == [], "the new message was never acknowledged"
    tracker.settle(7, 0, "Success")
    assert seen == ["new"]
    assert tracker.waiting() == 0
