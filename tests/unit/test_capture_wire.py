"""Capture sets (down/cmd) and capture reports (up/capture): valid ones parse, bad ones say why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from firmware_bundles.capture_wire import (
    MAX_CAPTURES,
    MAX_SAMPLES,
    CaptureCommand,
    CaptureReport,
    CaptureRequest,
    parse_capture_command,
    parse_capture_report,
)
from firmware_bundles.errors import WireError
from firmware_bundles.wire import MAX_PAYLOAD_BYTES, split_topic

CID = "0123456789abcdef" * 2
SHA = "ab" * 32


def request(**overrides: Any) -> dict[str, Any]:
    base = {
        "capture_id": CID,
        "rate": 0.5,
        "max_samples": 100,
        "expires_at": 1_900_000_000.0,
        "upload_url": "http://ctl:8080/api/v1/captures/x/uploads/dev-1",
        "bundle_sha256": SHA,
    }
    return {**base, **overrides}


def command(*captures: dict[str, Any], **extra: Any) -> bytes:
    body = {"schema": 1, "type": "captures", "captures": list(captures), **extra}
    return json.dumps(body).encode()


def test_round_trip_and_empty_set() -> None:
    one = CaptureRequest(CID, 0.25, 20, 1.9e9, "https://c/x", None, canceled=True)
    two = CaptureRequest("f" * 32, 1.0, 1, 1.9e9, "http://c/y", SHA)
    cmd = CaptureCommand((one, two))
    assert parse_capture_command(cmd.to_bytes()) == cmd
    # No captures left: the empty payload, which also clears the retained message.
    assert CaptureCommand(()).to_bytes() == b""
    assert parse_capture_command(b"") == CaptureCommand(())
    report = CaptureReport("dev-1", CID, 5.0, "uploading", 20, 4096, SHA, "")
    assert parse_capture_report(report.to_bytes()) == report
    assert split_topic("edgefleet/v1/dev/dev-1/up/capture") == ("dev-1", "up", "capture")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (command(request(rate=0)), r"rate must be in \(0, 1\], got 0.0"),
        (command(request(rate=1.5)), r"rate must be in \(0, 1\], got 1.5"),
        (command(request(rate=-0.1)), "rate must be in"),
        (
            b'{"schema":1,"type":"captures","captures":['
            + json.dumps(request()).encode()[:-1]
            + b',"rate":NaN}]}',
            "NaN is not a number EdgeFleet accepts",  # refused by every payload parser
        ),  # fmt: skip
        (command(request(rate="0.5")), "rate must be float, got '0.5'"),
        (command(request(rate=True)), "rate must be float, got bool"),
        (command(request(max_samples=0)), "max_samples must be 1..1000000, got 0"),
        (command(request(max_samples=MAX_SAMPLES + 1)), "max_samples must be 1..1000000"),
        (command(request(max_samples=10**30)), "max_samples must be 1..1000000"),
        (command(request(max_samples=2.5)), "max_samples must be int"),
        (command(request(capture_id="../../etc")), "capture_id must be 32 lowercase hex"),
        (command(request(capture_id="ABCDEF" * 5 + "AB")), "capture_id must be 32 lowercase"),
        (command(request(capture_id=7)), "capture_id must be 32 lowercase hex digits, got 7"),
        (command(request(bundle_sha256="xyz")), "bundle_sha256 is not a sha256"),
        (command(request(upload_url="file:///etc/passwd")), "upload_url must be an http"),
        (command(request(expires_at="soon")), "expires_at must be float"),
        (command(request(expires_at=-5)), "expires_at must be epoch seconds"),
        (command(request(canceled="yes")), "canceled must be bool"),
        (command(request(), request()), "lists a capture twice"),
        (
            command(*[request(capture_id=f"{i:032x}") for i in range(MAX_CAPTURES + 1)]),
            "more than 16",
        ),  # fmt: skip
        (command(request(), type="reboot"), "command.type must be 'captures', got 'reboot'"),
        (b'{"schema":1,"type":"captures","captures":{}}', "captures must be list"),
        (b'{"schema":1,"type":"captures","captures":[5]}', r"captures\[0\] must be an object"),
        (b'{"schema":2,"type":"captures","captures":[]}', "schema 2"),
        (b"\x00\xff", "not JSON"),
        (b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", "over 262144"),
    ],
)
def test_bad_capture_sets_name_the_problem(payload: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        parse_capture_command(payload)


def _report(**overrides: Any) -> bytes:
    body = {"schema": 1, "device_id": "dev-1", "capture_id": CID, "ts": 1.0,
            "status": "capturing", "samples": 3, "size": 10, **overrides}  # fmt: skip
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_report(status="done"), "capture.status 'done' is not one of"),
        (_report(samples=-1), "capture.samples must be >= 0"),
        (_report(samples=MAX_SAMPLES + 1), "over 1000000"),
        (_report(device_id="a/b"), "invalid device id"),
        (_report(capture_id="nope"), "capture.capture_id must be 32"),
        (_report(ts="x"), "capture.ts must be float"),
        (_report(bundle_sha256="12"), "not a sha256"),
    ],
)
def test_bad_capture_reports_name_the_problem(payload: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        parse_capture_report(payload)
