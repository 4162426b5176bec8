"""The broker goes away for a while: the controller ends up with every telemetry and drift
window a device produced meanwhile, each counted once (real broker, controller, agent)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.config import AgentConfig
from agent.daemon import Agent
from controller.server import ControllerServer
from controller.settings import Settings
from simulators.mosquitto import MosquittoBroker
from tests.agent_harness import deploy, make_bundle, wait_until
from tests.blob_server import BlobServer

pytestmark = pytest.mark.broker


def test_windows_sent_during_a_broker_outage_arrive_once_at_the_controller(
    fresh_broker: MosquittoBroker,
    blobs: BlobServer,
    keys,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    reference = {"x": np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)}
    bundle = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, drift_reference=reference)
    settings = Settings.from_env({
        "EDGEFLEET_DATA_DIR": str(tmp_path / "controller"),
        "EDGEFLEET_BROKER_URL": fresh_broker.url,
        "EDGEFLEET_TRUSTED_KEYS": str(keys[1]),
    })  # fmt: skip
    config = AgentConfig(
        device_id="outage-c", broker_url=fresh_broker.url, controller_url="http://127.0.0.1:9",
        data_dir=tmp_path / "outage-c", trust=(keys[1],), telemetry_interval_s=0.2,
        drift_interval_s=0.5,
    )  # fmt: skip
    agent = Agent(config)
    with ControllerServer(settings) as server, httpx.Client(base_url=server.api_url) as api:
        files = [("manifest", ("manifest.dsse.json", bundle.envelope))]
        files += [("files", (sha, data)) for sha, data in bundle.blobs.items()]
        assert api.post("/bundles/upload", files=files).status_code == 201
        agent.start()
        try:
            assert agent.link.connected.wait(10)
            deploy(fresh_broker, blobs, "outage-c", bundle, 1)
            assert wait_until(lambda: agent.active_bundle is not None)
            rng = np.random.default_rng(3)

            def traffic(n: int) -> None:
                for _ in range(n):
                    agent.infer({"x": rng.standard_normal((1, 8)).astype(np.float32)})
                    time.sleep(0.02)

            traffic(30)
            fresh_broker.stop()
            traffic(60)  # about 1.5 s of windows while the broker is away
            time.sleep(1.0)
            assert len(agent.outbox.pending()) >= 5
            fresh_broker.start()
            traffic(30)

            def totals() -> tuple[int, int]:
                summary = api.get("/telemetry/summary", params={"device": "outage-c"}).json()
                drift = api.get(
                    "/drift", params={"device": "outage-c", "bundle": bundle.manifest_sha256}
                ).json()
                inferences = sum(g["inference_count"] for g in summary["groups"])
                features = {f["name"]: f for b in drift["bundles"] for f in b["features"]}
                return inferences, features.get("x[0]", {}).get("n", 0)

            assert wait_until(lambda: totals() == (120, 120), timeout=30), totals()
            time.sleep(1.5)  # resends, if any, have landed by now: still once each
            assert totals() == (120, 120)
            assert api.get("/health").json()["ingest"]["dropped"] == 0
        finally:
            agent.stop()
