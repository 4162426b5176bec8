"""Device messages: valid ones parse; bad ones are refused with a reason and the device."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from controller.inbound import DroppedMessage, parse_report
from firmware_bundles.wire import MAX_PAYLOAD_BYTES, State, Status, Telemetry

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)
STATE_TOPIC = "edgefleet/v1/dev/cam-1/up/state"


def drop(topic: str, payload: bytes) -> DroppedMessage:
    with pytest.raises(DroppedMessage) as caught:
        parse_report(topic, payload, NOW)
    return caught.value


def test_valid_reports_parse() -> None:
    report = parse_report(STATE_TOPIC, State("cam-1", 1.0, "idle", "rpi4").to_bytes(), NOW)
    assert (report.kind, report.device_id, report.message.hardware_class) == (  # type: ignore[union-attr]
        "state",
        "cam-1",
        "rpi4",
    )
    status = parse_report("edgefleet/v1/dev/cam-1/up/status", Status(False, 0).to_bytes(), NOW)
    assert status.message == Status(False, 0.0)


def test_a_device_speaks_only_for_itself() -> None:
    dropped = drop(STATE_TOPIC, State("cam-2", 1.0, "idle", "rpi4").to_bytes())
    assert (dropped.reason, dropped.device) == ("device_id_mismatch", "cam-1")
    assert "'cam-2'" in dropped.problem


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (STATE_TOPIC, b"\xff\xfe", "bad_payload"),
        (STATE_TOPIC, b'{"schema": 1, "device_id": "cam-1", "phase": 3}', "bad_payload"),
        (STATE_TOPIC, b"x" * (MAX_PAYLOAD_BYTES + 1), "oversized"),
        ("edgefleet/v1/dev/cam-1/up/whatever", b"{}", "bad_topic"),
        ("edgefleet/v1/dev/cam-1/down/desired", b"{}", "bad_topic"),
        ("edgefleet/v1/dev/CAM_1/up/state", b"{}", "bad_topic"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(topic: str, payload: bytes, reason: str) -> None:
    assert drop(topic, payload).reason == reason


def test_fields_longer_than_the_store_keeps_are_refused() -> None:
    dropped = drop(STATE_TOPIC, State("cam-1", 1.0, "idle", "h" * 200).to_bytes())
    assert "hardware_class is 200 characters" in dropped.problem


def test_a_window_from_the_future_is_refused_and_one_a_little_ahead_is_kept() -> None:
    topic = "edgefleet/v1/dev/cam-1/up/telemetry"
    now = NOW.timestamp()

    def window(end: float) -> bytes:
        return Telemetry("cam-1", 1, end - 10, end, 5, 0, None, None, None).to_bytes()

    assert parse_report(topic, window(now + 60), NOW).kind == "telemetry"  # a clock 1 min ahead
    dropped = drop(topic, window(now + 86_400))
    assert dropped.reason == "bad_payload" and "after it arrived" in dropped.problem
