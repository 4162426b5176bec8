"""Raw paho clients for tests: publish as the controller would, or watch topics."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.mosquitto import MosquittoBroker


def publish(
    broker: MosquittoBroker, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1
) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


class Watcher:
    """Subscribes to ``pattern`` and keeps every (topic, payload) it receives."""

    def __init__(self, broker: MosquittoBroker, pattern: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-watch-{uuid.uuid4().hex[:8]}"
        )
        self._client.on_connect = lambda c, *_: c.subscribe(pattern, qos=1)
        self._client.on_subscribe = lambda *_: ready.set()  # the broker confirmed it
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        if not ready.wait(10):
            self.close()
            raise TimeoutError(f"the broker did not confirm a subscription to {pattern}")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def wait(
        self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float = 20.0
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(list(self.messages)):
                    return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
