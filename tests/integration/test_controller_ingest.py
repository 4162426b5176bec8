"""Device reports through a real broker into the controller, seen through its REST API.

Devices here are raw paho clients publishing exactly what an agent publishes (the
``firmware_bundles.wire`` messages), plus everything a broken or hostile device might
send instead. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.server import ControllerServer
from controller.settings import Settings
from firmware_bundles.wire import (
    MAX_PAYLOAD_BYTES,
    BundleRef,
    Drift,
    ErrorInfo,
    Event,
    State,
    Status,
    Telemetry,
    parse_desired,
    topic,
)
from simulators.mosquitto import MosquittoBroker
from tests.models import mlp
from tests.mqtt_tools import Watcher

pytestmark = [pytest.mark.broker]

OLD = BundleRef("ab" * 32, "classifier", "0.9.0")


class FakeDevice:
    """One MQTT connection publishing as device ``device_id`` (or as anyone, for attacks)."""

    def __init__(self, broker: MosquittoBroker, device_id: str) -> None:
        self.device_id = device_id
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, kind: str, payload: bytes, *, retain: bool = False, raw_topic: str = "") -> None:
        name = raw_topic or topic(self.device_id, "up", kind)
        self.client.publish(name, payload, qos=1, retain=retain).wait_for_publish(timeout=5)

    def state(self, **fields: Any) -> None:
        values: dict[str, Any] = {
            "device_id": self.device_id,
            "ts": time.time(),
            "phase": "idle",
            "hardware_class": "generic",
            "tags": [],
            "active": OLD,
        }
        values.update(fields)
        self.send("state", State(**values).to_bytes(), retain=True)

    def event(self, kind: str, **fields: Any) -> None:
        event = Event(device_id=self.device_id, ts=time.time(), type=kind, **fields)
        self.send("events", event.to_bytes())

    def telemetry(self, seq: int, start: float, count: int = 10) -> None:
        window = Telemetry(self.device_id, seq, start, start + 5, count, 1, 1.0, 2.0, 3.0, OLD)
        self.send("telemetry", window.to_bytes())

    def close(self) -> None:
        # Clear what we retained so later tests on this broker do not inherit it.
        self.client.publish(topic(self.device_id, "up", "state"), b"", qos=1, retain=True)
        self.client.publish(topic(self.device_id, "up", "status"), b"", qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def controller(
    mqtt_broker: MosquittoBroker, database_url: str, tmp_path: Path
) -> Iterator[tuple[ControllerServer, httpx.Client]]:
    settings = Settings.from_env(
        {
            "EDGEFLEET_DATA_DIR": str(tmp_path / "controller"),
            "EDGEFLEET_DATABASE_URL": database_url,
            "EDGEFLEET_BROKER_URL": mqtt_broker.url,
            "EDGEFLEET_ROLLOUT_TICK_S": "0.2",
        }
    )
    with ControllerServer(settings) as server:
        assert server.wait_broker_connected(10)
        with httpx.Client(base_url=server.api_url, timeout=30) as api:
            yield server, api


@pytest.fixture()
def devices(mqtt_broker: MosquittoBroker) -> Iterator[Callable[[str], FakeDevice]]:
    made: list[FakeDevice] = []
    run = uuid.uuid4().hex[:6]

    def make(name: str) -> FakeDevice:
        device = FakeDevice(mqtt_broker, f"{name}-{run}")
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")


def _ingest(api: httpx.Client) -> dict[str, Any]:
    counters: dict[str, Any] = api.get("/health").json()["ingest"]
    return counters


def test_device_reports_show_up_in_the_api(
    controller: tuple[ControllerServer, httpx.Client],
    devices: Callable[[str], FakeDevice],
) -> None:
    _, api = controller
    cam = devices("cam")
    tag = f"lab-{cam.device_id}"
    cam.send("status", Status(online=True, ts=time.time()).to_bytes(), retain=True)
    cam.state(hardware_class="rpi4", tags=[tag, "lab"], agent_version="0.1.0")
    start = time.time() - 20
    cam.telemetry(1, start, count=10)
    cam.telemetry(2, start + 5, count=7)
    cam.telemetry(1, start, count=10)  # a replayed window (QoS 1 redelivery): stored once
    cam.event("agent_started", message="boot")
    features = {"x": {"counts": [1, 2], "missing": 0, "n": 3, "min": 0.0, "max": 1.0}}
    features["x"].update({"sum": 1.5, "sumsq": 1.0})
    cam.send("drift", Drift(cam.device_id, 2, start + 5, start + 10, OLD, features).to_bytes())

    listed = eventually(lambda: api.get("/devices", params={"tag": tag}).json())
    assert [d["id"] for d in listed] == [cam.device_id]
    device = eventually(
        lambda: (
            (d := api.get(f"/devices/{cam.device_id}").json())["last_telemetry"]
            and d["last_telemetry"]["seq"] == 2
            and d
        )
    )
    assert device["online"] is True
    assert (device["hardware_class"], device["tags"]) == ("rpi4", [tag, "lab"])
    assert device["active_bundle"] == {
        "manifest_sha256": OLD.manifest_sha256,
        "name": "classifier",
        "version": "0.9.0",
    }
    assert device["agent_version"] == "0.1.0" and device["phase"] == "idle"

    events = eventually(lambda: api.get(f"/devices/{cam.device_id}/events").json())
    assert [(e["type"], e["message"]) for e in events] == [("agent_started", "boot")]
    eventually(lambda: _ingest(api)["stored"] >= 7)
    windows = api.get(f"/devices/{cam.device_id}/telemetry").json()
    assert [w["seq"] for w in windows] == [1, 2]
    assert sum(w["inference_count"] for w in windows) == 17
    assert windows[-1]["latency_p95_ms"] == 2.0

    for params in ({"hardware_class": "rpi4"}, {"online": True}, {"tag": "lab"}):
        assert cam.device_id in [d["id"] for d in api.get("/devices", params=params).json()]
    assert cam.device_id not in [
        d["id"] for d in api.get("/devices", params={"hardware_class": "jetson"}).json()
    ]

    # The agent's Last Will: the broker tells us the device went away.
    cam.send("status", Status(online=False, ts=0.0).to_bytes(), retain=True)
    eventually(lambda: api.get(f"/devices/{cam.device_id}").json()["online"] is False)
    offline = [d["id"] for d in api.get("/devices", params={"online": False}).json()]
    assert cam.device_id in offline
    assert _ingest(api)["dropped"] == 0


def _build_bundle(api: httpx.Client, tmp_path: Path) -> dict[str, Any]:
    model = mlp(tmp_path / "m.onnx")
    assert api.post("/models", json={"name": "classifier"}).status_code == 201
    api.post(
        "/models/classifier/versions",
        data={"version": "1.0.0"},
        files={"file": ("m.onnx", model.read_bytes())},
    ).raise_for_status()
    response = api.post(
        "/bundles", json={"model": "classifier", "version": "1.0.0", "bundle_version": "1.0.0"}
    )
    response.raise_for_status()
    bundle: dict[str, Any] = response.json()
    return bundle


def test_rollout_executions_follow_what_each_device_reports(
    controller: tuple[ControllerServer, httpx.Client],
    devices: Callable[[str], FakeDevice],
    mqtt_broker: MosquittoBroker,
    tmp_path: Path,
) -> None:
    server, api = controller
    bundle = _build_bundle(api, tmp_path)
    target = BundleRef(bundle["manifest_sha256"], bundle["name"], bundle["version"])
    ok, broken, flaky, retry, late = (
        devices(n) for n in ("ok", "broken", "flaky", "retry", "late")
    )
    tag = f"fleet-{ok.device_id}"
    for device in (ok, broken, flaky, retry):
        device.state(tags=[tag])
    eventually(lambda: len(api.get("/devices", params={"tag": tag}).json()) == 4)

    created = api.post(
        "/rollouts",
        json={
            "bundle": target.manifest_sha256,
            "tag": tag,
            "devices": [late.device_id],
            "trial": {"min_seconds": 2, "max_error_rate": 0.1},
            "in_progress_timeout_s": 4,
            "retry_backoff_s": 0.5,
            "start": True,
        },
    )
    assert created.status_code == 201, created.text
    rid = created.json()["id"]

    def rows() -> dict[str, dict[str, Any]]:
        return {r["device_id"]: r for r in api.get(f"/rollouts/{rid}/devices").json()}

    eventually(lambda: all(r["state"] == "notified" for r in rows().values()))
    # Each execution says when its device was told, and that it has not finished.
    told = rows()
    assert all(r["notified_at"] is not None and r["finished_at"] is None for r in told.values())
    assert all(r["updated_at"] >= r["notified_at"] for r in told.values())
    # A device connecting later still gets its desired state: it is retained.
    watcher = Watcher(mqtt_broker, topic(late.device_id, "down", "desired"))
    try:
        assert watcher.wait(lambda msgs: len(msgs) == 1, timeout=10)
        desired = parse_desired(watcher.messages[0][1])
    finally:
        watcher.close()
    assert (desired.generation, desired.bundle, desired.deployment_id) == (1, target, rid)
    assert desired.blob_base_url == f"{server.api_url}/blobs"
    assert desired.trial == {"min_seconds": 2.0, "max_error_rate": 0.1}
    envelope = httpx.get(f"{desired.blob_base_url}/{target.manifest_sha256}")
    assert envelope.status_code == 200 and len(envelope.content) > 100

    ok.state(phase="downloading", deployment_id=rid, generation=1, tags=[tag])
    eventually(lambda: rows()[ok.device_id]["state"] == "downloading")
    ok.state(phase="verifying", deployment_id=rid, generation=1, tags=[tag])
    eventually(lambda: rows()[ok.device_id]["state"] == "verifying")
    # A late duplicate of an earlier report does not move the row backwards.
    ok.event("update_started", deployment_id=rid, bundle=target)
    ok.state(phase="idle", active=target, previous=OLD, deployment_id=rid, generation=1)

    broken.event("update_started", deployment_id=rid, bundle=target)
    broken.event(
        "update_failed",
        deployment_id=rid,
        bundle=target,
        code="digest_mismatch",
        message="file 'model.onnx' has the wrong sha256",
    )
    flaky.state(phase="trial", active=target, previous=OLD, on_trial=True, deployment_id=rid)
    eventually(lambda: rows()[flaky.device_id]["state"] == "on_trial")
    reason = "error rate 0.4 over 0.05"
    flaky.event("rolled_back", deployment_id=rid, bundle=target, code="error_rate", message=reason)
    flaky.state(
        phase="failed", active=OLD, deployment_id=rid, error=ErrorInfo("error_rate", reason)
    )
    # A download failure is retried with a new generation (the device would not retry
    # a generation that failed); a bad digest is not.
    retry_watch = Watcher(mqtt_broker, topic(retry.device_id, "down", "desired"))
    try:
        retry.event("update_failed", deployment_id=rid, bundle=target, code="download")
        assert retry_watch.wait(
            lambda msgs: {parse_desired(m[1]).generation for m in msgs} >= {1, 2}, timeout=10
        )
    finally:
        retry_watch.close()
    eventually(lambda: rows()[retry.device_id]["attempts"] == 2)
    retried = rows()[retry.device_id]
    # Told again, later: the retry is a new notification, unfinished.
    assert retried["notified_at"] > told[retry.device_id]["notified_at"]
    assert retried["finished_at"] is None
    retry.state(phase="idle", active=target, previous=OLD, deployment_id=rid, generation=2)

    eventually(lambda: rows()[flaky.device_id]["state"] == "rolled_back")
    eventually(lambda: rows()[ok.device_id]["state"] == "committed")
    eventually(lambda: rows()[retry.device_id]["state"] == "committed")
    # The late device never answers: its execution times out, and the wave, with 2 of 5
    # committed, stays below its success threshold: the rollout pauses and says why.
    eventually(lambda: rows()[late.device_id]["state"] == "timed_out", timeout=15)
    final = rows()
    assert final[broken.device_id]["state"] == "failed"
    assert final[broken.device_id]["reason"] == {
        "code": "digest_mismatch",
        "message": "file 'model.onnx' has the wrong sha256",
    }
    assert final[flaky.device_id]["reason"]["code"] == "error_rate"
    assert final[late.device_id]["reason"]["code"] == "timeout"
    # Every finished execution says when, after its device was told; the late one was
    # not given up on before its 4 s in-progress time-out.
    for device_id, row in final.items():
        assert row["notified_at"] <= row["finished_at"] <= row["updated_at"], (device_id, row)
    assert final[ok.device_id]["finished_at"] < final[late.device_id]["finished_at"]
    late_row = final[late.device_id]
    assert late_row["finished_at"] - late_row["notified_at"] >= 4
    summary = eventually(
        lambda: (r := api.get(f"/rollouts/{rid}").json())["status"] == "paused" and r
    )
    assert "2 of 5 devices committed" in summary["reason"]
    assert {k: v for k, v in summary["counts"].items() if v} == {
        "committed": 2,
        "failed": 1,
        "rolled_back": 1,
        "timed_out": 1,
    }
    seen = api.get(f"/devices/{ok.device_id}").json()
    assert seen["active_bundle"]["version"] == "1.0.0"
    assert seen["previous_bundle"]["version"] == "0.9.0"
    assert seen["rollout_id"] == rid
    assert api.get(f"/devices/{flaky.device_id}").json()["last_error"]["code"] == "error_rate"

    # The late device comes back after its time-out and still converges.
    late.state(active=target, previous=OLD, deployment_id=rid, generation=1)
    eventually(lambda: rows()[late.device_id]["state"] == "committed")
    assert rows()[late.device_id]["finished_at"] > late_row["finished_at"]


def test_a_rollout_to_a_hardware_class_reaches_only_devices_of_that_class(
    controller: tuple[ControllerServer, httpx.Client],
    devices: Callable[[str], FakeDevice],
    tmp_path: Path,
) -> None:
    _, api = controller
    pi_class, jetson_class = (f"{name}-{uuid.uuid4().hex[:6]}" for name in ("rpi4", "jetson"))
    pis = [devices(f"pi{i}") for i in range(3)]
    jetson = devices("jetson")
    tag = f"lab-{jetson.device_id}"
    for pi in pis:
        pi.state(hardware_class=pi_class, tags=[tag] if pi is pis[0] else [])
    jetson.state(hardware_class=jetson_class, tags=[tag])
    known = {d.device_id for d in [*pis, jetson]}
    eventually(lambda: known <= {d["id"] for d in api.get("/devices").json()})
    model = mlp(tmp_path / "m.onnx")
    api.post("/models", json={"name": "edge"}).raise_for_status()
    api.post(
        "/models/edge/versions",
        data={"version": "1"},
        files={"file": ("m.onnx", model.read_bytes())},
    ).raise_for_status()
    bundle = api.post(
        "/bundles",
        json={"model": "edge", "version": "1", "bundle_version": "1",
              "hardware_classes": [pi_class, jetson_class]},
    ).json()  # fmt: skip

    created = api.post(
        "/rollouts", json={"bundle": bundle["manifest_sha256"], "hardware_class": pi_class}
    )
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    assert created.json()["target"]["hardware_class"] == pi_class
    rows = api.get(f"/rollouts/{rid}/devices").json()
    assert sorted(r["device_id"] for r in rows) == sorted(p.device_id for p in pis)
    assert api.post(f"/rollouts/{rid}/start").status_code == 200

    def generation(device: FakeDevice) -> int:
        return int(api.get(f"/devices/{device.device_id}").json()["generation"])

    eventually(lambda: all(generation(pi) == 1 for pi in pis))
    assert generation(jetson) == 0  # never told: another class

    # A class and a tag together: devices that have both.
    both = api.post(
        "/rollouts",
        json={"bundle": bundle["manifest_sha256"], "hardware_class": pi_class, "tag": tag},
    ).json()
    assert [r["device_id"] for r in api.get(f"/rollouts/{both['id']}/devices").json()] == [
        pis[0].device_id
    ]
    nobody = api.post("/rollouts", json={"bundle": bundle["manifest_sha256"],
                                         "hardware_class": "no-such-class"})  # fmt: skip
    assert nobody.status_code == 422
    assert "no known device matches hardware class 'no-such-class'" in nobody.json()["detail"]


def test_a_newer_rollout_supersedes_a_device_still_working_on_an_older_one(
    controller: tuple[ControllerServer, httpx.Client],
    devices: Callable[[str], FakeDevice],
    tmp_path: Path,
) -> None:
    _, api = controller
    bundle = _build_bundle(api, tmp_path)
    busy = devices("busy")
    busy.state()
    eventually(lambda: api.get(f"/devices/{busy.device_id}").status_code == 200)
    body = {"bundle": bundle["manifest_sha256"], "devices": [busy.device_id], "start": True}
    first = api.post("/rollouts", json=body).json()["id"]

    def row(rid: str) -> dict[str, Any]:
        return api.get(f"/rollouts/{rid}/devices").json()[0]  # type: ignore[no-any-return]

    eventually(lambda: row(first)["state"] == "notified")
    busy.state(phase="downloading", deployment_id=first, generation=1)
    eventually(lambda: row(first)["state"] == "downloading")
    second = api.post("/rollouts", json=body).json()["id"]
    eventually(lambda: row(second)["state"] == "notified")
    assert row(first)["state"] == "canceled"
    assert row(first)["reason"]["code"] == "superseded"
    device = api.get(f"/devices/{busy.device_id}").json()
    assert (device["generation"], device["rollout_id"]) == (2, second)
    # Reports about the first rollout no longer move anything.
    busy.event("update_failed", deployment_id=first, code="download", message="late news")
    busy.state(active=BundleRef(bundle["manifest_sha256"], "classifier", "1.0.0"),
               deployment_id=second, generation=2)  # fmt: skip
    eventually(lambda: row(second)["state"] == "committed")
    assert row(first)["state"] == "canceled"
    # Both finish: the first has nothing left of its own to judge.
    eventually(
        lambda: (
            {r["id"]: r["status"] for r in api.get("/rollouts").json()}
            == {first: "completed", second: "completed"}
        )
    )


def _bad_messages(device_id: str) -> list[tuple[str, bytes, str]]:
    """(kind, payload, drop reason) for every way a report can be wrong."""
    now = time.time()
    other = "someone-else"
    valid_state = json.loads(
        State(device_id, now, "idle", "generic").to_bytes()
    )  # to corrupt field by field
    oversized = json.dumps({"schema": 1, "pad": "x" * MAX_PAYLOAD_BYTES}).encode()
    cases: list[tuple[str, bytes, str]] = []
    for kind in ("state", "events", "telemetry", "drift", "status"):
        cases += [
            (kind, b"\xff\xfe\x00 not json", "bad_payload"),
            (kind, b"[1, 2, 3]", "bad_payload"),
            (kind, b'{"schema": 99}', "bad_payload"),
            (kind, oversized, "oversized"),
        ]
    wrong_types = {
        "state": {**valid_state, "phase": 5},
        "events": {"schema": 1, "device_id": device_id, "ts": now, "type": 7},
        "telemetry": {"schema": 1, "device_id": device_id, "seq": "one", "window_start": now},
        "drift": {"schema": 1, "device_id": device_id, "features": []},
        "status": {"schema": 1, "online": "yes", "ts": now},
    }
    cases += [(k, json.dumps(v).encode(), "bad_payload") for k, v in wrong_types.items()]
    impostors = {
        "state": State(other, now, "idle", "generic").to_bytes(),
        "events": Event(other, now, "agent_started").to_bytes(),
        "telemetry": Telemetry(other, 1, now, now + 1, 1, 0, None, None, None).to_bytes(),
        "drift": Drift(other, 1, now, now + 1, OLD, {}).to_bytes(),
    }
    cases += [(k, v, "device_id_mismatch") for k, v in impostors.items()]
    cases.append(("state", State(device_id, now, "idle", "x" * 500).to_bytes(), "bad_payload"))
    return cases


def test_bad_messages_are_dropped_counted_and_ingest_goes_on(
    controller: tuple[ControllerServer, httpx.Client],
    devices: Callable[[str], FakeDevice],
) -> None:
    _, api = controller
    rogue = devices("rogue")
    before = _ingest(api)
    cases = _bad_messages(rogue.device_id)
    for kind, payload, _ in cases:
        rogue.send(kind, payload)
    weird_topics = [
        f"edgefleet/v1/dev/{rogue.device_id}/up/bogus",  # unknown kind
        f"edgefleet/v1/dev/{rogue.device_id}/up/state/extra",  # too deep
        "edgefleet/v1/dev/Not_A_Device/up/state",  # invalid device id
    ]
    for name in weird_topics:
        rogue.send("", State(rogue.device_id, time.time(), "idle", "g").to_bytes(), raw_topic=name)

    rogue.send("state", b"", retain=True)  # clearing a retained message is not bad data
    expected = len(cases) + len(weird_topics)
    # The empty retained message is the last one sent: wait for it too (the counts are
    # read while the worker may still be on its batch).
    after = eventually(
        lambda: (
            (c := _ingest(api))["dropped"] - before["dropped"] >= expected
            and c["ignored"] > before["ignored"]
            and c
        ),
        timeout=20,
    )
    assert after["dropped"] - before["dropped"] == expected
    assert after["ignored"] - before["ignored"] == 1
    reasons = after["dropped_by_reason"]
    for reason in ("bad_payload", "oversized", "device_id_mismatch", "bad_topic"):
        assert reasons.get(reason, 0) - before["dropped_by_reason"].get(reason, 0) == sum(
            1 for *_, r in cases if r == reason
        ) + (len(weird_topics) if reason == "bad_topic" else 0)
    # Nothing of it was stored: no impostor device, no rogue device from bad data.
    assert api.get("/devices/someone-else").status_code == 404
    assert api.get(f"/devices/{rogue.device_id}").status_code == 404

    # The worker is alive and well: the next valid messages go through.
    rogue.state(hardware_class="generic", tags=["recovered"])
    rogue.telemetry(1, time.time() - 5)
    windows = f"/devices/{rogue.device_id}/telemetry"
    eventually(lambda: (r := api.get(windows)).status_code == 200 and len(r.json()) == 1)
    assert api.get(f"/devices/{rogue.device_id}").json()["tags"] == ["recovered"]
    assert _ingest(api)["dropped"] == after["dropped"]


@pytest.mark.postgres
def test_two_replicas_split_the_ingest_and_agree_on_one_database(
    mqtt_broker: MosquittoBroker,
    postgres_url: str,
    devices: Callable[[str], FakeDevice],
    tmp_path: Path,
) -> None:
    env = {
        "EDGEFLEET_DATA_DIR": str(tmp_path / "shared"),
        "EDGEFLEET_DATABASE_URL": postgres_url,
        "EDGEFLEET_BROKER_URL": mqtt_broker.url,
    }
    replicas = [ControllerServer(Settings.from_env(env)).start() for _ in range(2)]
    apis = [httpx.Client(base_url=r.api_url, timeout=30) for r in replicas]
    try:
        assert all(r.wait_broker_connected(10) for r in replicas)
        bundle = _build_bundle(apis[0], tmp_path)
        target = BundleRef(bundle["manifest_sha256"], bundle["name"], bundle["version"])
        fleet = [devices(f"rep{i}") for i in range(4)]
        for device in fleet:
            device.state()
        start = time.time() - 1000
        for seq in range(1, 51):
            for device in fleet:
                device.telemetry(seq, start + seq * 5, count=seq)

        def stored_windows(api: httpx.Client) -> int:
            return sum(
                len(api.get(f"/devices/{d.device_id}/telemetry", params={"limit": 100}).json())
                for d in fleet
            )

        eventually(lambda: stored_windows(apis[1]) == 200, timeout=30)
        shares = [_ingest(api)["stored"] for api in apis]
        assert all(share > 0 for share in shares), shares  # both replicas took a share
        assert stored_windows(apis[0]) == 200  # each window once, whoever stored it

        # Rolled out through one replica, reported through whichever: one truth.
        ids = [d.device_id for d in fleet]
        body = {"bundle": str(bundle["id"]), "devices": ids, "start": True}
        rid = apis[0].post("/rollouts", json=body).json()["id"]
        eventually(lambda: apis[1].get(f"/rollouts/{rid}").json()["counts"]["notified"] == 4)
        for device in fleet:
            device.state(active=target, deployment_id=rid, generation=1)

        def completed_everywhere() -> bool:
            return all(a.get(f"/rollouts/{rid}").json()["status"] == "completed" for a in apis)

        eventually(completed_everywhere)
    finally:
        for api in apis:
            api.close()
        for replica in replicas:
            replica.stop()


def test_the_controller_rides_out_a_broker_restart(
    fresh_broker: MosquittoBroker, tmp_path: Path
) -> None:
    settings = Settings.from_env(
        {"EDGEFLEET_DATA_DIR": str(tmp_path / "c"), "EDGEFLEET_BROKER_URL": fresh_broker.url}
    )
    with ControllerServer(settings) as server, httpx.Client(base_url=server.api_url) as api:
        assert server.wait_broker_connected(10)
        bundle = _build_bundle(api, tmp_path)
        fresh_broker.stop()
        eventually(lambda: api.get("/health").json()["broker_connected"] is False)

        # Rolled out while the broker is down: the desired state goes out once it is back.
        deployed = api.post(
            "/rollouts", json={"bundle": str(bundle["id"]), "devices": ["phoenix"], "start": True}
        )
        assert deployed.status_code == 201, deployed.text
        eventually(lambda: api.get("/devices/phoenix").json()["generation"] == 1)
        fresh_broker.start()
        assert server.wait_broker_connected(20)
        watcher = Watcher(fresh_broker, topic("phoenix", "down", "desired"))
        try:
            assert watcher.wait(lambda msgs: len(msgs) == 1, timeout=10)
            assert parse_desired(watcher.messages[0][1]).deployment_id == deployed.json()["id"]
        finally:
            watcher.close()

        device = FakeDevice(fresh_broker, "phoenix")
        try:
            device.state(tags=["back"])
            eventually(lambda: api.get("/devices/phoenix").json()["tags"] == ["back"])
        finally:
            device.close()
