"""The spine end to end: operator -> controller -> broker -> real agents -> back.

One controller under uvicorn (SQLite), one private Mosquitto, a simulated fleet of
real agents. A story: the fleet gets v1 through the API; then three bad bundles are
pushed to three devices, and each device refuses its bundle, keeps serving v1, and
the controller shows why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from controller.server import ControllerServer
from controller.settings import Settings
from firmware_bundles.builder import BuiltBundle
from firmware_bundles.from_model import bundle_from_model_file
from firmware_bundles.keys import init_keys, load_private_key
from simulators.fleet import Fleet, FleetSpec
from simulators.mosquitto import MosquittoBroker
from tests.agent_harness import wait_until
from tests.models import mlp

pytestmark = pytest.mark.broker
DEVICES = 10


class Stack:
    def __init__(
        self, server: ControllerServer, fleet: Fleet, api: httpx.Client, rogue_key: Path, work: Path
    ):
        self.server, self.fleet, self.api, self.rogue_key, self.work = (
            server,
            fleet,
            api,
            rogue_key,
            work,
        )

    def ok(self, response: httpx.Response) -> Any:
        assert response.status_code < 400, (
            f"{response.request.url}: {response.status_code} {response.text}"
        )
        return response.json()

    def upload(self, bundle: BuiltBundle) -> dict[str, Any]:
        files = [("manifest", ("manifest.dsse.json", bundle.envelope))]
        files += [("files", (sha, data)) for sha, data in bundle.blobs.items()]
        return self.ok(self.api.post("/bundles/upload", files=files))  # type: ignore[no-any-return]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return self.ok(self.api.get(f"/rollouts/{rollout_id}"))  # type: ignore[no-any-return]

    def roll_out(self, bundle: str, **target: Any) -> str:
        body = {"bundle": bundle, "start": True, **target}
        return self.ok(self.api.post("/rollouts", json=body))["id"]  # type: ignore[no-any-return]

    def executions(self, rollout_id: str) -> list[dict[str, Any]]:
        return self.ok(self.api.get(f"/rollouts/{rollout_id}/devices"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def stack(
    mqtt_broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("spine")
    _, rogue_pub = init_keys(work / "rogue")
    env = {
        "EDGEFLEET_DATA_DIR": str(work / "controller"),
        "EDGEFLEET_BROKER_URL": mqtt_broker.url,
        "EDGEFLEET_ENV": "development",
        # The controller accepts the rogue key (a misconfigured or compromised
        # controller); the devices do not, and that is what this test is about.
        "EDGEFLEET_TRUSTED_KEYS": str(rogue_pub),
    }
    with ControllerServer(Settings.from_env({**os.environ, **env})) as server:
        spec = FleetSpec(
            devices=DEVICES, broker_url=mqtt_broker.url, controller_url=server.url,
            trust=(server.release_public_key_path,), data_dir=work / "devices",
            prefix="e2e", tags=("e2e",), telemetry_interval_s=0.5,
        )  # fmt: skip
        with Fleet(spec) as fleet, httpx.Client(base_url=server.api_url, timeout=30) as api:
            yield Stack(server, fleet, api, work / "rogue" / "release.key", work)


def test_ten_devices_receive_a_bundle_and_report_telemetry(stack: Stack) -> None:
    model = mlp(stack.work / "v1.onnx", seed=1)
    stack.ok(stack.api.post("/models", json={"name": "mlp"}))
    with model.open("rb") as handle:
        stack.ok(stack.api.post("/models/mlp/versions", data={"version": "1.0.0"},
                                files={"file": ("mlp.onnx", handle)}))  # fmt: skip
    bundle = stack.ok(
        stack.api.post(
            "/bundles", json={"model": "mlp", "version": "1.0.0", "bundle_version": "1.0.0"}
        )
    )
    assert wait_until(
        lambda: len(stack.ok(stack.api.get("/devices", params={"tag": "e2e"}))) == DEVICES
    )
    rid = stack.roll_out(bundle["manifest_sha256"], tag="e2e")
    assert wait_until(lambda: stack.rollout(rid)["status"] == "completed", timeout=60)
    assert stack.rollout(rid)["counts"]["committed"] == DEVICES
    assert stack.fleet.count_on("1.0.0") == DEVICES
    devices = stack.ok(stack.api.get("/devices", params={"tag": "e2e"}))
    assert {d["active_bundle"]["version"] for d in devices} == {"1.0.0"}

    stack.fleet.feed(rate_per_device=20)
    try:

        def all_reported() -> bool:
            return all(
                sum(
                    w["inference_count"]
                    for w in stack.ok(stack.api.get(f"/devices/{d['id']}/telemetry"))
                )
                > 0
                for d in devices
            )

        assert wait_until(all_reported, timeout=30)
    finally:
        stack.fleet.stop_feeding()
    windows = stack.ok(stack.api.get(f"/devices/{devices[0]['id']}/telemetry"))
    served = [w for w in windows if w["inference_count"]]
    assert served and served[0]["latency_p50_ms"] > 0
    # Telemetry is attributed to the bundle that served it.
    assert {w["bundle_sha256"] for w in served} == {bundle["manifest_sha256"]}


def _sign(stack: Stack, key: Path, version: str, seed: int, **kw: Any) -> BuiltBundle:
    # A model of its own per bundle: blobs are content-addressed, so a shared model
    # would be one blob, and tampering with it would hit every bundle holding it.
    model = mlp(stack.work / f"{version}.onnx", seed=seed)
    return bundle_from_model_file(
        model, name="mlp", version=version, release_counter=5, key=load_private_key(key),
        now=datetime.now(timezone.utc), **kw,
    )  # fmt: skip


def test_bad_bundles_are_refused_and_the_controller_shows_why(stack: Stack) -> None:
    release_key = stack.server.settings.release_key_path
    tampered = _sign(stack, release_key, "2.0.0-tampered", 7)
    rogue = _sign(stack, stack.rogue_key, "2.0.0-rogue", 8)
    bad_golden = _sign(
        stack, release_key, "2.0.0-golden", 9, golden_outputs={"y": np.zeros((4, 4), np.float32)}
    )
    for bundle in (tampered, rogue, bad_golden):
        stack.upload(bundle)
    # Flip one byte of the stored model blob: corruption or tampering after upload.
    blob = stack.server.settings.blob_dir / "sha256" / tampered.manifest.file("model").sha256
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    expected = {}
    for index, (bundle, code) in enumerate(
        ((tampered, "digest_mismatch"), (rogue, "signature"), (bad_golden, "health_check"))
    ):
        device = stack.fleet.spec.device_id(index)
        expected[device] = (stack.roll_out(bundle.manifest_sha256, devices=[device]), code)

    for device, (rid, code) in expected.items():
        assert wait_until(lambda r=rid: stack.rollout(r)["counts"]["failed"] == 1, timeout=30), (
            stack.rollout(rid)
        )
        row = stack.executions(rid)[0]
        assert row["device_id"] == device and row["state"] == "failed"
        assert row["reason"]["code"] == code, row
        detail = stack.ok(stack.api.get(f"/devices/{device}"))
        assert detail["last_error"]["code"] == code
        assert detail["active_bundle"]["version"] == "1.0.0"
    # Every refusing device still serves v1.
    for index in range(3):
        agent = stack.fleet.agents[index]
        assert agent.active_bundle is not None and agent.active_bundle.version == "1.0.0"
        assert agent.infer({"x": np.ones((1, 8), np.float32)})["y"].shape == (1, 4)
