"""Data capture end to end: a controller, a real Mosquitto, three real agents, onnxruntime.

A story: three devices run mlp 1.0.0. An operator asks them for 20 samples each at
rate 1.0. Each device is fed its own inputs; one of them is killed mid-capture and
restarted on the same data dir. Every device uploads once, the controller shows the
capture finished, and the export holds exactly 60 rows: the inputs each device was fed
(the restarted one without duplicates) with the outputs it answered, its device id and
the model version.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from agent.config import AgentConfig
from agent.daemon import Agent
from controller.server import ControllerServer
from controller.settings import Settings
from simulators.mosquitto import MosquittoBroker
from tests.agent_harness import wait_until
from tests.models import mlp
from tests.mqtt_tools import Watcher

pytestmark = pytest.mark.broker
DEVICES = ("cap-a", "cap-b", "cap-c")
CAP = 20


class Rig:
    def __init__(
        self, server: ControllerServer, api: httpx.Client, work: Path, broker: MosquittoBroker
    ):
        self.server, self.api, self.work, self.broker = server, api, work, broker
        self.agents: dict[str, Agent] = {}

    def ok(self, response: httpx.Response, status: int = 200) -> Any:
        assert response.status_code == status, f"{response.status_code} {response.text}"
        return response.json()

    def start_agent(self, device_id: str) -> Agent:
        config = AgentConfig(
            device_id=device_id,
            broker_url=self.broker.url,
            controller_url=self.server.url,
            data_dir=self.work / device_id,
            trust=(self.server.release_public_key_path,),
            tags=("capture",),
            telemetry_interval_s=0.3,
        )
        agent = Agent(config)
        agent.start()
        assert agent.link.connected.wait(10)
        self.agents[device_id] = agent
        return agent

    def capture(self, capture_id: str) -> dict[str, Any]:
        return self.ok(self.api.get(f"/captures/{capture_id}"))  # type: ignore[no-any-return]

    def retained_capture_sets(self) -> list[tuple[str, bytes]]:
        """What a device connecting now would find on its down/cmd topic."""
        watcher = Watcher(self.broker, "edgefleet/v1/dev/+/down/cmd")
        time.sleep(0.3)
        watcher.close()
        return [(t, p) for t, p in watcher.messages if t.split("/")[3] in DEVICES]

    def device(self, capture_id: str, device_id: str) -> dict[str, Any]:
        rows = self.capture(capture_id)["devices"]
        return next(d for d in rows if d["device_id"] == device_id)


@pytest.fixture()
def rig(mqtt_broker: MosquittoBroker, tmp_path: Path) -> Iterator[Rig]:
    env = {
        "EDGEFLEET_DATA_DIR": str(tmp_path / "controller"),
        "EDGEFLEET_BROKER_URL": mqtt_broker.url,
        "EDGEFLEET_ENV": "development",
        "EDGEFLEET_ROLLOUT_TICK_S": "0.2",
        "EDGEFLEET_CAPTURE_TICK_S": "0.2",
    }
    with ControllerServer(Settings.from_env({**os.environ, **env})) as server:
        assert server.wait_broker_connected()
        with httpx.Client(base_url=server.api_url, timeout=30) as api:
            api.headers["X-EdgeFleet-Actor"] = "erin"
            rig = Rig(server, api, tmp_path / "devices", mqtt_broker)
            try:
                yield rig
            finally:
                for agent in rig.agents.values():
                    agent.stop()


def feed(agent: Agent, seed: int, count: int) -> list[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """``count`` inferences on distinct inputs; returns (input row, output row) pairs."""
    rng = np.random.default_rng(seed)
    served = []
    for _ in range(count):
        x = rng.standard_normal((1, 8)).astype(np.float32)
        y = agent.infer({"x": x})["y"]
        served.append((x[0], y[0]))
    return served


def test_three_devices_capture_upload_once_and_export_what_they_were_fed(rig: Rig) -> None:
    for device_id in DEVICES:
        rig.start_agent(device_id)
    model = mlp(rig.work / "mlp.onnx", seed=3)
    rig.ok(rig.api.post("/models", json={"name": "mlp"}), 201)
    rig.ok(rig.api.post("/models/mlp/versions", data={"version": "1.0.0"},
                        files={"file": ("mlp.onnx", model.read_bytes())}), 201)  # fmt: skip
    body = {"model": "mlp", "version": "1.0.0", "bundle_version": "1.0.0"}
    sha = rig.ok(rig.api.post("/bundles", json=body), 201)["manifest_sha256"]
    rig.ok(rig.api.post("/rollouts", json={"bundle": sha, "devices": list(DEVICES),
                                           "start": True}), 201)  # fmt: skip
    assert wait_until(
        lambda: all(a.active_bundle is not None for a in rig.agents.values()), timeout=60
    )

    ask = {"devices": list(DEVICES), "rate": 1.0, "max_samples": CAP, "duration_s": 300}
    cid = rig.ok(rig.api.post("/captures", json=ask), 201)["id"]
    # The broker has each device's capture set, and the devices got it and said so.
    assert wait_until(
        lambda: all(
            d["notified"] and d["status"] == "capturing" for d in rig.capture(cid)["devices"]
        ),
        timeout=20,
    ), rig.capture(cid)

    served: dict[str, list[tuple[npt.NDArray[Any], npt.NDArray[Any]]]] = {}
    for index, device_id in enumerate(DEVICES[:2]):
        served[device_id] = feed(rig.agents[device_id], seed=index, count=CAP + 5)

    # The third is killed once 8 samples are on its disk (its report says so), restarted
    # on the same data dir, and fed new inputs: it must finish with 8 + 12, no repeats.
    victim = DEVICES[2]
    served[victim] = feed(rig.agents[victim], seed=100, count=8)
    assert wait_until(lambda: rig.device(cid, victim)["samples"] == 8, timeout=20)
    rig.agents[victim].stop(graceful=False)
    restarted = rig.start_agent(victim)
    assert wait_until(lambda: restarted.active_bundle is not None, timeout=30)
    served[victim] += feed(restarted, seed=200, count=CAP)

    assert wait_until(lambda: rig.capture(cid)["status"] == "finished", timeout=30), rig.capture(
        cid
    )
    summary = rig.capture(cid)
    assert summary["counts"]["uploaded"] == 3 and summary["samples_uploaded"] == 3 * CAP
    for row in summary["devices"]:
        assert row["upload"]["model_version"] == "1.0.0"
        assert row["upload"]["bundle_sha256"] == sha

    export = rig.api.get(f"/captures/{cid}/export")
    assert export.status_code == 200, export.text
    data = np.load(io.BytesIO(export.content), allow_pickle=False)
    assert data["input/x"].shape == (3 * CAP, 8) and data["output/y"].shape == (3 * CAP, 4)
    assert list(data["device_id"]) == [d for d in sorted(DEVICES) for _ in range(CAP)]
    assert set(data["model_name"]) == {"mlp"} and set(data["model_version"]) == {"1.0.0"}
    assert set(data["bundle_sha256"]) == {sha}
    for index, device_id in enumerate(sorted(DEVICES)):
        rows = slice(index * CAP, (index + 1) * CAP)
        fed = np.stack([x for x, _ in served[device_id][:CAP]])
        answered = np.stack([y for _, y in served[device_id][:CAP]])
        np.testing.assert_array_equal(data["input/x"][rows], fed, err_msg=device_id)
        np.testing.assert_array_equal(data["output/y"][rows], answered, err_msg=device_id)
        stamps = data["timestamp"][rows]
        assert (np.diff(stamps) >= 0).all(), device_id  # in the order they were served

    # Done is done: the devices hold no open capture, more traffic captures nothing, and
    # the broker keeps no capture set for them (the controller cleared the retained ones).
    assert all(a.capture.open_captures == [] for a in rig.agents.values())
    assert wait_until(lambda: rig.retained_capture_sets() == [], timeout=10)
    feed(rig.agents[DEVICES[0]], seed=7, count=5)
    time.sleep(1.0)  # three of its ticks: anything sampled would be on disk by now
    assert list((rig.work / DEVICES[0] / "captures").rglob("*.npz")) == []
