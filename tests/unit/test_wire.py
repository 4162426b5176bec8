"""Every payload the controller or an agent reads: valid ones parse, bad ones name the problem."""

from __future__ import annotations

import json

import pytest

from firmware_bundles.errors import WireError
from firmware_bundles.wire import (
    MAX_PAYLOAD_BYTES,
    BundleRef,
    Desired,
    ErrorInfo,
    Event,
    State,
    Status,
    Telemetry,
    check_device_id,
    parse_desired,
    parse_drift,
    parse_event,
    parse_state,
    parse_status,
    parse_telemetry,
    split_topic,
    topic,
)

REF = BundleRef("ab" * 32, "m", "1.0.0")


def test_round_trips() -> None:
    desired = Desired(3, REF, "dep-1", "http://c/api/v1/blobs")
    assert parse_desired(desired.to_bytes()) == desired
    state = State(
        "dev-1",
        1.5,
        "failed",
        "rpi4",
        ["a"],
        REF,
        None,
        3,
        "dep-1",
        ErrorInfo("signature", "x"),
        "0.1",
    )
    assert parse_state(state.to_bytes()) == state
    event = Event("dev-1", 2.0, "update_failed", "dep-1", REF, "digest_mismatch", "bad")
    assert parse_event(event.to_bytes()) == event
    tele = Telemetry("dev-1", 7, 1.0, 6.0, 10, 1, 0.5, 0.9, 1.2, REF)
    assert parse_telemetry(tele.to_bytes()) == tele
    with_histogram = Telemetry("dev-1", 8, 6.0, 9.0, 10, 1, 0.5, 0.9, 1.2, REF, {210: 6, 230: 3})
    assert parse_telemetry(with_histogram.to_bytes()) == with_histogram
    assert parse_status(Status(True, 3.0).to_bytes()) == Status(True, 3.0)


@pytest.mark.parametrize(
    "parse", [parse_desired, parse_state, parse_event, parse_telemetry, parse_status]
)
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"schema": 9}', "schema"),
        (b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", "over"),
    ],
)
def test_bad_payloads_raise_wire_error(parse, payload: bytes, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WireError, match=message):
        parse(payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            b'{"schema":1,"device_id":"d","seq":"1","window_start":0,"window_end":1,"inference_count":1,"error_count":0}',
            "seq",
        ),
        (
            b'{"schema":1,"device_id":"d","seq":1,"window_start":0,"window_end":1,"inference_count":-1,"error_count":0}',
            "telemetry.inference_count must be an integer 0",
        ),
        (
            b'{"schema":1,"device_id":"d","seq":1,"window_start":0,"window_end":1,"inference_count":100000000000000000000,"error_count":0}',
            "telemetry.inference_count must be an integer 0",
        ),
        (
            b'{"schema":1,"device_id":"d","seq":1,"window_start":NaN,"window_end":1,"inference_count":1,"error_count":0}',
            "NaN is not a number EdgeFleet accepts",
        ),
        (
            b'{"schema":1,"device_id":"d","seq":1,"window_start":-1e400,"window_end":1,"inference_count":1,"error_count":0}',
            "telemetry.window_start must be a finite number",
        ),
        (
            b'{"schema":1,"device_id":"d","seq":1,"window_start":5,"window_end":1,"inference_count":1,"error_count":0}',
            "before it starts",
        ),
        (
            b'{"schema":1,"device_id":"D/#","seq":1,"window_start":0,"window_end":1,"inference_count":1,"error_count":0}',
            "invalid device id",
        ),
        (
            b'{"schema":1,"device_id":"d","seq":true,"window_start":0,"window_end":1,"inference_count":1,"error_count":0}',
            "telemetry.seq must be an integer",
        ),
    ],
)
def test_telemetry_wrong_types(payload: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        parse_telemetry(payload)


_WINDOW = '"schema":1,"device_id":"d","seq":1,"window_start":0,"window_end":1,"error_count":0'


@pytest.mark.parametrize(
    ("histogram", "count", "message"),
    [
        ("[1, 2]", 5, "must be an object"),
        ('{"x": 1}', 5, "bucket 'x'"),
        ('{"-1": 1}', 5, "bucket '-1'"),
        ('{"99999": 1}', 5, "bucket '99999'"),
        ('{"10": -1}', 5, "count >= 0"),
        ('{"10": 1.5}', 5, "count >= 0"),
        ('{"10": true}', 5, "count >= 0"),
        ('{"10": 4, "11": 2}', 5, "more than inference_count 5"),
    ],
)
def test_telemetry_histogram_is_checked(histogram: str, count: int, message: str) -> None:
    payload = f'{{{_WINDOW},"inference_count":{count},"latency_histogram":{histogram}}}'
    with pytest.raises(WireError, match=message):
        parse_telemetry(payload.encode())


@pytest.mark.parametrize("bad", ["", "Dev", "dev/1", "dev+", "#", "-dev", "a" * 64, "dév"])
def test_device_ids_that_could_escape_their_topics(bad: str) -> None:
    with pytest.raises(WireError):
        check_device_id(bad)


def test_topics() -> None:
    assert topic("dev-1", "up", "state") == "edgefleet/v1/dev/dev-1/up/state"
    assert split_topic("edgefleet/v1/dev/dev-1/up/telemetry") == ("dev-1", "up", "telemetry")
    for bad in (
        "edgefleet/v1/dev/dev-1/up/nope",
        "other/v1/dev/dev-1/up/state",
        "edgefleet/v1/dev/DEV/up/state",
    ):
        with pytest.raises(WireError):
            split_topic(bad)


def _drift(**stats: object) -> bytes:
    feature = {"counts": [2, 1], "missing": 0, "n": 3, "min": -1.0, "max": 2.0,
               "sum": 1.5, "sumsq": 5.25, **stats}  # fmt: skip
    body = {"schema": 1, "device_id": "d", "seq": 4, "window_start": 0.0, "window_end": 60.0,
            "bundle": {"manifest_sha256": "ab" * 32, "name": "m", "version": "1"},
            "features": {"x[0]": feature}}  # fmt: skip
    return json.dumps(body).encode()


def test_a_drift_window_round_trips() -> None:
    window = parse_drift(_drift())
    assert window.features["x[0]"]["n"] == 3 and window.seq == 4
    assert parse_drift(window.to_bytes()) == window
    empty = parse_drift(_drift(counts=[0, 0], n=0, min=None, max=None, sum=0.0, sumsq=0.0))
    assert empty.features["x[0]"]["min"] is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_drift(sum=None), "drift.features['x[0]'].sum must be a number"),
        (_drift(sumsq=10**400), "sumsq must be a finite number"),
        (_drift(n=4), "n is 4 but its counts add up to 3"),
        (_drift(min=None), "min must be null exactly when n is 0"),
        (_drift(counts=[2**60, 0], n=2**60), "counts[] must be an integer 0..2**53"),
        (_drift(counts=[0] * 2000, n=0, min=None, max=None), "list of 1..1024 counts"),
        (_drift(counts=[]), "list of 1..1024 counts"),
        (_drift(missing=-1), "missing must be an integer"),
        (_drift(extra=1), "must have exactly the keys"),
        (_drift().replace(b'"sum": 1.5', b'"sum": Infinity'), "Infinity is not a number"),
        (_drift().replace(b'"window_end": 60.0', b'"window_end": 1e400'), "finite number"),
    ],
)
def test_drift_windows_that_would_poison_sums_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(WireError) as caught:
        parse_drift(payload)
    assert message in str(caught.value)
