"""The agent's link against a real Mosquitto: a window counts as delivered only when
somebody was subscribed (the contract tests/unit/test_outbox_sender.py's fake link keeps),
and an agent keeps its windows until the controller is there to take them."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.mqtt_link import MqttLink
from agent.outbox_sender import OutboxSender
from firmware_bundles.wire import parse_telemetry
from simulators.mosquitto import MosquittoBroker
from tests.agent_harness import wait_until
from tests.mqtt_tools import Watcher

pytestmark = pytest.mark.broker


class Outcomes:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.done = threading.Event()

    def ack(self) -> None:
        self.seen.append("ack")
        self.done.set()

    def refused(self, code: int, reason: str) -> None:
        self.seen.append(f"refused: {reason}")
        self.done.set()


def _publish(link: MqttLink, kind: str) -> list[str]:
    outcome = Outcomes()
    assert link.publish_tracked(kind, b"{}", outcome.ack, outcome.refused)
    assert outcome.done.wait(10), "no PUBACK"
    time.sleep(0.1)
    return outcome.seen


def _persistent_shared_subscriber(broker: MosquittoBroker, pattern: str) -> mqtt.Client:
    """Subscribe as the controller does: MQTT 5, a shared subscription, a session that
    outlives the connection."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"test-ctl-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 60
    client.connect(broker.host, broker.port, clean_start=True, properties=props)
    client.loop_start()
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe(pattern, qos=1)
    assert subscribed.wait(5)
    return client


def test_the_link_reports_a_window_nobody_received_as_refused(
    fresh_broker: MosquittoBroker,
) -> None:
    device = f"link-{uuid.uuid4().hex[:6]}"
    link = MqttLink(device, fresh_broker.url, lambda kind, payload: None, lambda: None)
    link.start()
    try:
        assert link.connected.wait(10)
        assert _publish(link, "telemetry") == ["refused: No matching subscribers"]
        watcher = Watcher(fresh_broker, f"edgefleet/v1/dev/{device}/up/telemetry")
        try:
            assert _publish(link, "telemetry") == ["ack"]
            assert watcher.wait(lambda m: len(m) == 1)
        finally:
            watcher.close()
        # A subscriber away for a moment with its session kept (the controller across a
        # network blip): the broker queues for it, so that is a delivery.
        client = _persistent_shared_subscriber(
            fresh_broker, f"$share/g/edgefleet/v1/dev/{device}/up/#"
        )
        client.disconnect()
        client.loop_stop()
        assert _publish(link, "drift") == ["ack"]
    finally:
        link.stop()


def test_an_agent_keeps_its_windows_until_somebody_subscribes(
    fresh_broker: MosquittoBroker,
    keys,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    device = f"keep-{uuid.uuid4().hex[:6]}"
    config = AgentConfig(
        device_id=device, broker_url=fresh_broker.url, controller_url="http://127.0.0.1:9",
        data_dir=tmp_path / device, trust=(keys[1],), telemetry_interval_s=0.1,
    )  # fmt: skip
    agent = Agent(config)
    # Probes at most 1 s apart, so the wait below does not depend on how long it took.
    agent.sender = OutboxSender(agent.outbox, agent.link, device_id=device, hold_max_s=1.0)
    agent.start()
    try:
        assert agent.link.connected.wait(10)
        assert wait_until(lambda: len(agent.outbox.pending()) >= 10, timeout=10)
        assert agent.sender.held() == ["telemetry"]
        watcher = Watcher(fresh_broker, f"edgefleet/v1/dev/{device}/up/telemetry")
        try:
            assert wait_until(lambda: agent.sender.held() == [], timeout=20)
            assert wait_until(lambda: len(agent.outbox.pending()) <= 2, timeout=20)
            time.sleep(0.3)
            seqs = sorted({parse_telemetry(p).seq for _, p in watcher.messages})
            assert seqs[0] == 1, "the first window, kept since before anybody subscribed"
            assert seqs == list(range(1, seqs[-1] + 1)), "no window lost"
        finally:
            watcher.close()
    finally:
        agent.stop()
