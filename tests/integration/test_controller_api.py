"""The controller's REST API under real uvicorn, on SQLite and PostgreSQL, with a real broker.

An operator registers a model, builds and signs a bundle on the controller, uploads a
bundle signed elsewhere, and devices fetch blobs with Range requests. Every refusal
must say what was wrong.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from controller.errors import SettingsError
from controller.server import ControllerServer
from controller.settings import Settings
from firmware_bundles.builder import BuiltBundle
from firmware_bundles.dsse import verify_envelope
from firmware_bundles.from_model import bundle_from_model_file
from firmware_bundles.keys import init_keys, key_id, load_private_key, parse_public_key
from firmware_bundles.manifest import PAYLOAD_TYPE
from simulators.mosquitto import MosquittoBroker
from tests.models import mlp

pytestmark = [pytest.mark.broker]

Api = httpx.Client
ControllerFactory = Callable[..., tuple[ControllerServer, Api]]


@pytest.fixture()
def start_controller(
    mqtt_broker: MosquittoBroker, database_url: str, tmp_path: Path
) -> Iterator[ControllerFactory]:
    """Start controllers (real uvicorn, real broker, the test's database); stop them after."""
    started: list[tuple[ControllerServer, Api]] = []

    def start(**env: str) -> tuple[ControllerServer, Api]:
        settings = Settings.from_env(
            {
                "EDGEFLEET_DATA_DIR": str(tmp_path / f"controller-{len(started)}"),
                "EDGEFLEET_DATABASE_URL": database_url,
                "EDGEFLEET_BROKER_URL": mqtt_broker.url,
                **env,
            }
        )
        server = ControllerServer(settings).start()
        api = httpx.Client(base_url=server.api_url, timeout=60)
        started.append((server, api))
        return server, api

    yield start
    for server, api in started:
        api.close()
        server.stop()


def _detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    return detail


def _register_model(api: Api, tmp_path: Path, name: str, version: str = "1.0.0") -> Path:
    path = mlp(tmp_path / f"{name}.onnx")
    assert api.post("/models", json={"name": name}).status_code == 201
    response = api.post(
        f"/models/{name}/versions",
        data={"version": version},
        files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
    )
    assert response.status_code == 201, response.text
    return path


def _signed_elsewhere(model: Path, private: Path, version: str) -> BuiltBundle:
    return bundle_from_model_file(
        model,
        name="elsewhere",
        version=version,
        release_counter=1,
        key=load_private_key(private),
        now=datetime.now(timezone.utc),
    )


def _upload(api: Api, bundle: BuiltBundle, blobs: dict[str, bytes] | None = None) -> httpx.Response:
    blobs = bundle.blobs if blobs is None else blobs
    by_sha = {entry.sha256: entry.name for entry in bundle.manifest.files}
    files = [("manifest", ("manifest.dsse.json", bundle.envelope, "application/json"))]
    files += [
        ("files", (by_sha[sha], data, "application/octet-stream")) for sha, data in blobs.items()
    ]
    return api.post("/bundles/upload", files=files)


def test_a_model_becomes_a_signed_bundle_devices_can_fetch_and_verify(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    server, api = start_controller()
    model_path = _register_model(api, tmp_path, "classifier")

    models = api.get("/models").json()
    assert [m["name"] for m in models] == ["classifier"]
    versions = api.get("/models/classifier/versions").json()
    assert versions[0]["runtime"] == "onnxruntime"
    assert versions[0]["sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert versions[0]["size"] == model_path.stat().st_size

    built = api.post(
        "/bundles",
        json={
            "model": "classifier",
            "version": "1.0.0",
            "bundle_version": "1.0.0",
            "hardware_classes": ["generic", "rpi4"],
            "health_check": {"atol": 0.01, "rtol": 0.01, "latency_budget_ms": 500},
        },
    )
    assert built.status_code == 201, built.text
    bundle = built.json()
    assert (bundle["name"], bundle["version"], bundle["release_counter"]) == (
        "classifier",
        "1.0.0",
        1,
    )
    assert bundle["hardware_classes"] == ["generic", "rpi4"]
    assert bundle["manifest"]["health_check"]["atol"] == 0.01
    assert {f["role"] for f in bundle["files"]} == {"model", "golden_inputs", "golden_outputs"}

    # The envelope is a blob addressed by its own sha256, signed by the key the
    # controller publishes for devices to trust.
    envelope = api.get(f"/blobs/{bundle['manifest_sha256']}").content
    assert hashlib.sha256(envelope).hexdigest() == bundle["manifest_sha256"]
    release_pub = parse_public_key(api.get("/keys/release.pub").content)
    assert server.release_public_key_path.read_bytes() == api.get("/keys/release.pub").content
    verify_envelope(envelope, PAYLOAD_TYPE, {key_id(release_pub): release_pub})
    for entry in bundle["files"]:
        blob = api.get(f"/blobs/{entry['sha256']}").content
        assert (len(blob), hashlib.sha256(blob).hexdigest()) == (entry["size"], entry["sha256"])
    assert api.get(f"/blobs/{versions[0]['sha256']}").content == model_path.read_bytes()

    # The next bundle of the same name gets the next release counter (anti-rollback).
    second = api.post(
        "/bundles", json={"model": "classifier", "version": "1.0.0", "bundle_version": "1.0.1"}
    ).json()
    assert second["release_counter"] == 2
    by_id = api.get(f"/bundles/{second['id']}").json()
    by_sha = api.get(f"/bundles/{second['manifest_sha256']}").json()
    assert by_id == by_sha and by_id["manifest"]["version"] == "1.0.1"
    assert [b["version"] for b in api.get("/bundles").json()] == ["1.0.0", "1.0.1"]

    again = api.post(
        "/bundles", json={"model": "classifier", "version": "1.0.0", "bundle_version": "1.0.1"}
    )
    assert "classifier@1.0.1 already exists" in _detail(again, 409)


def test_model_uploads_are_checked_by_content(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    _, api = start_controller()
    _register_model(api, tmp_path, "m")
    assert "already exists" in _detail(api.post("/models", json={"name": "m"}), 409)
    assert "invalid model name" in _detail(api.post("/models", json={"name": "a/b"}), 422)

    def upload(filename: str, data: bytes, version: str = "2.0.0") -> httpx.Response:
        return api.post(
            "/models/m/versions", data={"version": version}, files={"file": (filename, data)}
        )

    assert "not an ONNX model" in _detail(upload("m.onnx", b"\x00\x01garbage"), 422)
    assert "neither .onnx nor .tflite" in _detail(upload("m.bin", b"whatever"), 422)
    assert "not a TFLite model" in _detail(upload("m.tflite", b"\x00" * 64), 422)
    assert "already has version '1.0.0'" in _detail(
        upload("m.onnx", (tmp_path / "m.onnx").read_bytes(), "1.0.0"), 409
    )
    tflite = upload("m.tflite", b"\x1c\x00\x00\x00TFL3" + bytes(56))
    assert tflite.status_code == 201 and tflite.json()["runtime"] == "tflite"
    missing = api.post("/models/m/versions", files={"file": ("m.onnx", b"x")})
    assert _detail(missing, 422) == "missing field 'version' (body)"
    assert "no model named 'ghost'" in _detail(
        api.post("/models/ghost/versions", data={"version": "1"}, files={"file": ("g.onnx", b"")}),
        404,
    )
    assert "no model named 'ghost'" in _detail(
        api.post("/bundles", json={"model": "ghost", "version": "1", "bundle_version": "1"}), 404
    )
    assert "has no version '9'" in _detail(
        api.post("/bundles", json={"model": "m", "version": "9", "bundle_version": "1"}), 404
    )


def test_bundles_signed_elsewhere_are_verified_before_they_are_accepted(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    partner_key, partner_pub = init_keys(tmp_path / "partner")
    stranger_key, _ = init_keys(tmp_path / "stranger")
    _, api = start_controller(EDGEFLEET_TRUSTED_KEYS=str(partner_pub))
    model = mlp(tmp_path / "partner-model.onnx", seed=3)
    good = _signed_elsewhere(model, partner_key, "1.0.0")
    model_sha = good.manifest.file("model").sha256

    # A flipped byte in the model: refused, naming the file.
    tampered = dict(good.blobs)
    data = bytearray(tampered[model_sha])
    data[len(data) // 2] ^= 0x01
    tampered[model_sha] = bytes(data)
    detail = _detail(_upload(api, good, tampered), 422)
    assert "'model.onnx'" in detail and "sha256" in detail

    # A blob cut short, and one left out: refused, naming the file.
    short = dict(good.blobs)
    short[model_sha] = short[model_sha][:-10]
    assert "'model.onnx'" in _detail(_upload(api, good, short), 422)
    partial = {k: v for k, v in good.blobs.items() if k != model_sha}
    assert "'model.onnx'" in _detail(_upload(api, good, partial), 422)
    assert api.get(f"/bundles/{good.manifest_sha256}").status_code == 404

    # Signed by a key the controller does not trust.
    stranger = _signed_elsewhere(model, stranger_key, "1.0.1")
    assert "not signed by a trusted key" in _detail(_upload(api, stranger), 422)

    # A file the manifest does not name.
    files = [
        ("manifest", ("manifest.dsse.json", good.envelope)),
        ("files", ("notes.txt", b"hello")),
    ]
    assert "'notes.txt' is not named in the manifest" in _detail(
        api.post("/bundles/upload", files=files), 422
    )

    accepted = _upload(api, good)
    assert accepted.status_code == 201, accepted.text
    body = accepted.json()
    assert (body["source"], body["manifest_sha256"]) == ("uploaded", good.manifest_sha256)
    assert api.get(f"/blobs/{good.manifest_sha256}").content == good.envelope
    assert api.get(f"/blobs/{model_sha}").content == good.blobs[model_sha]
    assert "exists already" in _detail(_upload(api, good), 409)


def test_blobs_support_range_requests(start_controller: ControllerFactory, tmp_path: Path) -> None:
    _, api = start_controller()
    path = _register_model(api, tmp_path, "ranged")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()

    full = api.get(f"/blobs/{sha}")
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes"
    tail = api.get(f"/blobs/{sha}", headers={"Range": "bytes=100-"})
    assert tail.status_code == 206 and tail.content == data[100:]
    assert tail.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    middle = api.get(f"/blobs/{sha}", headers={"Range": "bytes=10-19"})
    assert middle.status_code == 206 and middle.content == data[10:20]
    beyond = api.get(f"/blobs/{sha}", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(data)}"
    head = api.head(f"/blobs/{sha}")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(data)

    assert f"no blob {'0' * 64}" in _detail(api.get(f"/blobs/{'0' * 64}"), 404)
    assert "not a sha256 hex digest" in _detail(api.get("/blobs/XYZ"), 422)


def test_invalid_calls_get_messages_that_name_the_problem(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    _, api = start_controller(EDGEFLEET_MAX_UPLOAD_BYTES="4096")
    _register_model(api, tmp_path, "small")
    for size in (10_000, 3 << 20):  # over the file limit; over the whole-request limit
        big = api.post(
            "/models/small/versions", data={"version": "2"}, files={"file": ("m.onnx", bytes(size))}
        )
        assert "EDGEFLEET_MAX_UPLOAD_BYTES" in _detail(big, 413)
    assert [v["version"] for v in api.get("/models/small/versions").json()] == ["1.0.0"]

    sha = api.post(
        "/bundles", json={"model": "small", "version": "1.0.0", "bundle_version": "1"}
    ).json()["manifest_sha256"]
    device = f"api-{uuid.uuid4().hex[:8]}"

    def deploy(body: dict[str, object]) -> httpx.Response:
        return api.post("/rollouts", json=body)

    assert "invalid device id 'Bad_Id'" in _detail(
        deploy({"bundle": sha, "devices": ["Bad_Id"]}), 422
    )
    assert f"no bundle with manifest_sha256 {'a' * 64}" in _detail(
        deploy({"bundle": "a" * 64, "devices": [device]}), 404
    )
    assert "no bundle with id 999" in _detail(deploy({"bundle": "999", "devices": [device]}), 404)
    assert "neither a bundle id nor a manifest sha256" in _detail(
        deploy({"bundle": "latest", "devices": [device]}), 422
    )
    assert "a rollout needs a target" in _detail(deploy({"bundle": sha}), 422)
    assert "unknown field 'trial.min_second' (body)" in _detail(
        deploy({"bundle": sha, "devices": [device], "trial": {"min_second": 5}}), 422
    )
    assert "'trial.max_error_rate' (body)" in _detail(
        deploy({"bundle": sha, "devices": [device], "trial": {"max_error_rate": -1}}), 422
    )
    assert "no known device matches tag 'nobody-has-this'" in _detail(
        deploy({"bundle": sha, "tag": "nobody-has-this"}), 422
    )
    assert _detail(deploy({"devices": [device]}), 422) == "missing field 'bundle' (body)"
    assert "unknown field 'device' (body)" in _detail(deploy({"bundle": sha, "device": "x"}), 422)
    assert "'devices' (body)" in _detail(deploy({"bundle": sha, "devices": "not-a-list"}), 422)
    assert "JSON" in _detail(
        api.post("/rollouts", content=b"{not json", headers={"content-type": "application/json"}),
        422,
    )
    one = {"bundle": sha, "devices": [device]}
    assert "exactly one of 'percent' or 'count'" in _detail(
        deploy({**one, "waves": {"steps": [{"percent": 5, "count": 3}]}}), 422
    )
    assert "'waves.steps' (body)" in _detail(deploy({**one, "waves": {"steps": []}}), 422)
    assert "'waves.steps.0.percent' (body)" in _detail(
        deploy({**one, "waves": {"steps": [{"percent": 150}]}}), 422
    )
    assert "not both" in _detail(
        deploy({**one, "waves": {"steps": [{"percent": 100}]},
                "exponential_rate": {"base_per_minute": 5}}),
        422,
    )  # fmt: skip
    assert "failure_share threshold is a share" in _detail(
        deploy({**one, "abort": [{"kind": "failure_share", "threshold": 5}]}), 422
    )
    assert "'abort.0.kind' (body)" in _detail(
        deploy({**one, "abort": [{"kind": "vibes", "threshold": 0.1}]}), 422
    )
    assert "X-EdgeFleet-Actor" in _detail(
        api.post("/rollouts", json=one, headers={"X-EdgeFleet-Actor": "bad actor/1"}), 422
    )

    assert f"no device '{device}'" in _detail(api.get(f"/devices/{device}"), 404)
    assert "invalid device id" in _detail(api.get("/devices/NOT_VALID"), 422)
    assert "EDGEFLEET_MAX_PAGE_SIZE" in _detail(api.get("/devices", params={"limit": 10**6}), 422)
    assert "no rollout 'nope'" in _detail(api.get("/rollouts/nope"), 404)
    assert "no rollout 'nope'" in _detail(api.post("/rollouts/nope/pause"), 404)
    assert "no such endpoint" in _detail(api.get("/nothing-here"), 404)

    # A rollout to a device not seen yet creates it; nothing is sent before the start.
    created = api.post("/rollouts", json=one, headers={"X-EdgeFleet-Actor": "alice"})
    assert created.status_code == 201, created.text
    rollout = created.json()
    assert (rollout["status"], rollout["counts"]["queued"]) == ("created", 1)
    seen = api.get(f"/devices/{device}").json()
    assert (seen["online"], seen["generation"], seen["last_telemetry"]) == (False, 0, None)
    rid = rollout["id"]
    assert "cannot pause rollout" in _detail(api.post(f"/rollouts/{rid}/pause"), 409)
    assert "unknown action 'explode'" in _detail(api.post(f"/rollouts/{rid}/explode"), 422)
    started = api.post(
        f"/rollouts/{rid}/start", json={"reason": "approved"}, headers={"X-EdgeFleet-Actor": "bob"}
    )
    assert started.json()["status"] == "running"
    deadline = time.monotonic() + 20
    while api.get(f"/devices/{device}").json()["generation"] != 1:
        assert time.monotonic() < deadline, "the rollout tick never notified the device"
        time.sleep(0.1)
    assert api.get(f"/rollouts/{rid}/devices").json()[0]["state"] == "notified"
    trail = [(e["actor"], e["action"]) for e in api.get(f"/rollouts/{rid}/audit").json()]
    assert trail[:2] == [("alice", "create"), ("bob", "start")]
    assert any(actor.startswith("controller:") for actor, _ in trail[2:])


def test_health_reports_database_broker_and_ingest(start_controller: ControllerFactory) -> None:
    server, api = start_controller()
    assert server.wait_broker_connected(10)
    health = api.get("/health").json()
    assert health["status"] == "ok" and health["db"] == "ok"
    assert health["broker_connected"] is True
    assert {"received", "dropped", "stored"} <= set(health["ingest"])
    assert "/api/v1/health" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_production_refuses_to_start_without_a_release_key(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"EDGEFLEET_ENV": "production", "EDGEFLEET_DATA_DIR": str(tmp_path / "prod")}
    )
    with pytest.raises(SettingsError, match="EDGEFLEET_RELEASE_KEY"):
        ControllerServer(settings)
    assert not (tmp_path / "prod" / "keys" / "release.key").exists()
