"""Drift windows from a real agent, and the outbox across a broker outage."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.daemon import Agent
from firmware_bundles.drift_reference import bucket_counts, decode_reference
from firmware_bundles.wire import parse_drift, parse_telemetry
from simulators.mosquitto import MosquittoBroker
from tests.agent_harness import deploy, make_bundle, wait_until
from tests.blob_server import BlobServer
from tests.mqtt_tools import Watcher

pytestmark = pytest.mark.broker


def reference(n: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)}


def test_drift_windows_count_exactly_what_the_device_saw(
    mqtt_broker: MosquittoBroker,
    blobs: BlobServer,
    agent_factory,
    keys,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    agent = agent_factory("drift-a")
    bundle = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, drift_reference=reference())
    refs, _ = decode_reference(bundle.blobs[bundle.manifest.file("drift_reference").sha256])
    assert "x[0]" in refs and "output:y:class" in refs and refs["x[0]"].buckets == 10
    watcher = Watcher(mqtt_broker, "edgefleet/v1/dev/drift-a/up/drift")
    deploy(mqtt_broker, blobs, "drift-a", bundle, 1)
    assert wait_until(lambda: agent.active_bundle is not None)

    rng = np.random.default_rng(5)
    sent = [rng.standard_normal((3, 8)).astype(np.float32) + 0.5 for _ in range(100)]
    for x in sent:
        agent.infer({"x": x})

    def merged() -> dict[str, np.ndarray]:
        total: dict[str, np.ndarray] = {}
        for _, payload in watcher.messages:
            for name, stats in parse_drift(payload).features.items():
                total[name] = total.get(name, 0) + np.asarray(stats["counts"])
        return total

    assert watcher.wait(lambda m: merged().get("x[3]", np.zeros(1)).sum() >= 300)
    time.sleep(1.2)  # later windows add nothing twice
    all_x = np.concatenate(sent)
    for j in (0, 3, 7):
        want, _ = bucket_counts(refs[f"x[{j}]"], all_x[:, j])
        assert merged()[f"x[{j}]"].tolist() == want.tolist()
    assert merged()["output:y:class"].sum() == 300
    watcher.close()


def test_windows_survive_a_broker_outage_and_arrive_after_it(
    fresh_broker: MosquittoBroker,
    blobs: BlobServer,
    keys,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    config = AgentConfig(
        device_id="outage-a", broker_url=fresh_broker.url, controller_url="http://127.0.0.1:9",
        data_dir=tmp_path / "outage-a", trust=(keys[1],), telemetry_interval_s=0.2,
        drift_interval_s=0.2,
    )  # fmt: skip
    agent = Agent(config)
    agent.start()
    try:
        assert agent.link.connected.wait(10)
        bundle = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, drift_reference=reference())
        deploy(fresh_broker, blobs, "outage-a", bundle, 1)
        assert wait_until(lambda: agent.active_bundle is not None)
        watcher = Watcher(fresh_broker, "edgefleet/v1/dev/outage-a/up/#")
        time.sleep(0.5)
        fresh_broker.stop()
        watcher.close()
        # Broker away: traffic goes on, windows pile up in the outbox on disk.
        for _ in range(50):
            agent.infer({"x": np.zeros((1, 8), np.float32)})
            time.sleep(0.02)
        time.sleep(1.0)
        queued = len(agent.outbox.pending())
        assert queued >= 8, queued
        fresh_broker.start()
        watcher = Watcher(fresh_broker, "edgefleet/v1/dev/outage-a/up/#")
        assert wait_until(lambda: len(agent.outbox.pending()) <= 2, timeout=30)
        time.sleep(0.5)
        agent.stop()
        tele = [parse_telemetry(p) for t, p in watcher.messages if t.endswith("/telemetry")]
        drift = [parse_drift(p) for t, p in watcher.messages if t.endswith("/drift")]
        # Every window produced during the outage arrived (seq has no gaps), none lost.
        seqs = sorted({t.seq for t in tele})
        assert seqs and seqs == list(range(seqs[0], seqs[-1] + 1))
        assert sum(t.inference_count for t in {t.seq: t for t in tele}.values()) == 50
        drift_rows = sum(d.features["x[0]"]["n"] for d in {d.seq: d for d in drift}.values())
        assert drift_rows == 50
        watcher.close()
    finally:
        agent.stop()


def test_outbox_is_bounded_and_drops_oldest(tmp_path: Path) -> None:
    from agent.outbox import Outbox

    box = Outbox(tmp_path / "o", max_messages=5, fsync=False)
    for i in range(8):
        box.put("telemetry", f"m{i}".encode())
    assert [p.read_bytes() for p in box.pending()] == [f"m{i}".encode() for i in range(3, 8)]
    assert box.dropped == 3
    box.ack(box.pending()[0])
    reopened = Outbox(tmp_path / "o", max_messages=5, fsync=False)  # after a reboot
    assert len(reopened.pending()) == 4
    assert reopened.put("drift", b"n").name.endswith(".drift")
    assert reopened.pending()[-1].read_bytes() == b"n"


def test_drift_windows_follow_the_model_and_idle_devices_send_none(
    mqtt_broker: MosquittoBroker,
    blobs: BlobServer,
    agent_factory,
    keys,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    # A long drift window: only a model switch closes it early.
    agent = agent_factory("drift-b", drift_interval_s=3600)
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, drift_reference=reference())
    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2, drift_reference=reference())
    watcher = Watcher(mqtt_broker, "edgefleet/v1/dev/drift-b/up/drift")
    deploy(mqtt_broker, blobs, "drift-b", v1, 1)
    assert wait_until(lambda: agent.active_bundle is not None)
    time.sleep(1.0)
    assert watcher.messages == []  # no traffic yet: nothing worth a message
    for _ in range(30):
        agent.infer({"x": np.zeros((1, 8), np.float32)})
    deploy(mqtt_broker, blobs, "drift-b", v2, 2)
    assert wait_until(
        lambda: agent.active_bundle is not None and agent.active_bundle.version == "2.0.0"
    )
    assert watcher.wait(lambda m: len(m) >= 1)
    [window] = [parse_drift(p) for _, p in watcher.messages]
    assert window.bundle.version == "1.0.0" and window.features["x[0]"]["n"] == 30
    time.sleep(1.0)
    assert len(watcher.messages) == 1  # v2 has served nothing: no window for it
    watcher.close()
