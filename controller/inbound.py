"""Device messages as they arrive: parse, or say exactly why not. Pure (bytes in).

Every payload must parse with its schema and, where it names a device, name the same
device as its topic: a device may only speak for itself (the broker ACL ties topics to
the device; the payload must agree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from firmware_bundles.capture_wire import CaptureReport, parse_capture_report
from firmware_bundles.errors import WireError
from firmware_bundles.wire import (
    MAX_PAYLOAD_BYTES,
    Drift,
    Event,
    State,
    Status,
    Telemetry,
    parse_drift,
    parse_event,
    parse_state,
    parse_status,
    parse_telemetry,
    split_topic,
)

Message = State | Event | Telemetry | Drift | Status | CaptureReport

PARSERS: dict[str, Callable[[bytes], Any]] = {
    "state": parse_state,
    "events": parse_event,
    "telemetry": parse_telemetry,
    "drift": parse_drift,
    "status": parse_status,
    "capture": parse_capture_report,
}

# Why a message was dropped (the keys of the ingest "dropped_by_reason" counters).
BAD_TOPIC = "bad_topic"
OVERSIZED = "oversized"
BAD_PAYLOAD = "bad_payload"
ID_MISMATCH = "device_id_mismatch"
# How far ahead of the controller's clock a window may end (device clocks drift).
MAX_CLOCK_AHEAD_S = 900.0
# A zero-length payload deletes a retained message (a device decommissioned): not bad data.
EMPTY = "empty"


@dataclass(frozen=True)
class Report:
    """One valid message from one device."""

    kind: str
    device_id: str
    message: Message
    received_at: datetime
    # Delivered from the broker's retained store (a replay), not sent just now.
    retained: bool = False


class DroppedMessage(Exception):
    """A message that is not processed; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, device: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason
        self.device = device
        self.problem = problem


def _device_of(topic: str) -> str:
    parts = topic.split("/")
    return parts[3][:70] if len(parts) > 3 else "?"


def _too_long(message: Message) -> str | None:
    """The first field longer than the controller stores, if any."""
    checks: list[tuple[str, object, int]] = []
    for ref_name in ("active", "previous", "bundle"):
        ref = getattr(message, ref_name, None)
        if ref is not None:
            checks += [
                (f"{ref_name}.name", ref.name, 128),
                (f"{ref_name}.version", ref.version, 128),
            ]
    for field, limit in (
        ("hardware_class", 128),
        ("deployment_id", 64),
        ("agent_version", 64),
        ("code", 64),
    ):
        checks.append((field, getattr(message, field, None), limit))
    error = getattr(message, "error", None)
    if error is not None:
        checks.append(("error.code", error.code, 64))
    for tag in getattr(message, "tags", ()):
        checks.append(("tags[]", tag, 128))
    if len(getattr(message, "tags", ())) > 64:
        return "tags: more than 64 tags"
    for field, value, limit in checks:
        if isinstance(value, str) and len(value) > limit:
            return f"{field} is {len(value)} characters, over {limit}"
    return None


def parse_report(
    topic: str, payload: bytes, received_at: datetime, *, retained: bool = False
) -> Report:
    """Parse one MQTT message from a device.

    Raises:
        DroppedMessage: the topic, the payload or the device id is not acceptable.
    """
    try:
        device_id, direction, kind = split_topic(topic)
    except WireError as exc:
        raise DroppedMessage(BAD_TOPIC, _device_of(topic), str(exc)) from None
    if direction != "up":
        raise DroppedMessage(BAD_TOPIC, device_id, f"topic {topic!r} is not a device report")
    if not payload:
        raise DroppedMessage(EMPTY, device_id, f"empty {kind} payload (a cleared retained message)")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DroppedMessage(
            OVERSIZED,
            device_id,
            f"{kind} payload is {len(payload)} bytes, over {MAX_PAYLOAD_BYTES}",
        )
    try:
        message = PARSERS[kind](payload)
    except WireError as exc:
        raise DroppedMessage(BAD_PAYLOAD, device_id, str(exc)) from None
    claimed = getattr(message, "device_id", device_id)
    if claimed != device_id:
        raise DroppedMessage(
            ID_MISMATCH,
            device_id,
            f"{kind} payload names device {claimed!r} but arrived on {device_id!r}'s topic",
        )
    problem = _too_long(message) or _from_the_future(message, received_at)
    if problem is not None:
        raise DroppedMessage(BAD_PAYLOAD, device_id, f"{kind} payload: {problem}")
    return Report(kind, device_id, message, received_at, retained)


def _from_the_future(message: Message, received_at: datetime) -> str | None:
    """A window that ends well after it arrived: a clock far ahead (or a forgery). Kept,
    it would count in every check until then and never be rolled up."""
    if not isinstance(message, (Telemetry, Drift)):
        return None
    ahead = message.window_end - received_at.timestamp()
    if ahead <= MAX_CLOCK_AHEAD_S:
        return None
    return (
        f"window ends {ahead:.0f} s after it arrived (device clock ahead by more than "
        f"{MAX_CLOCK_AHEAD_S:.0f} s?)"
    )
