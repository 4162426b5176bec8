"""The agent's one MQTT connection: paho behind a small adapter.

paho types and its network thread stay in here: received messages go to the
``on_message(kind, payload)`` callback the agent gives (which only enqueues), and the
agent publishes through :meth:`MqttLink.publish`. The Last Will marks the device
offline (retained) when the connection drops without a goodbye.

MQTT 5, with a session that never expires (what ``clean_session=False`` was under
3.1.1): the broker keeps the device's subscriptions and queued downlink messages while
it is away. MQTT 5 also says, in each PUBACK, whether anybody received the message:
:meth:`MqttLink.publish_tracked` reports "No matching subscribers" as a refusal, so a
window sent while the controller is not subscribed (a broker restarted without
persistence, the controller reconnecting later than the device) stays in the outbox.

On a device the link runs paho's own network thread. In a simulated fleet many links
share one :class:`agent.mqtt_hub.MqttHub` thread instead; the link then connects and
reconnects (with backoff) on the hub's thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt_hub import MqttHub
from firmware_bundles.errors import EdgeFleetError, WireError
from firmware_bundles.puback import OnRefused, PubackTracker
from firmware_bundles.wire import Status, split_topic, topic

log = logging.getLogger(__name__)


SESSION_NEVER_EXPIRES = 0xFFFFFFFF


def parse_broker_url(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
        raise EdgeFleetError(f"broker URL must look like mqtt://HOST:PORT, got {url!r}")
    return parsed.hostname, parsed.port or 1883


class MqttLink:
    def __init__(
        self,
        device_id: str,
        broker_url: str,
        on_message: Callable[[str, bytes], None],
        on_connected: Callable[[], None],
        *,
        keepalive: int = 30,
        hub: MqttHub | None = None,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self.device_id = device_id
        self._hub = hub
        self._stopping = False
        self._cut_until = 0.0
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._backoff_s = reconnect_min_s
        self.host, self.port = parse_broker_url(broker_url)
        self._on_message = on_message
        self._on_connected = on_connected
        self._keepalive = keepalive
        self.connected = threading.Event()
        # Counts connections: what was in flight on an earlier one gets no PUBACK now.
        self.generation = 0
        self._acks = PubackTracker()
        # Client id == device id: the broker ACL pattern (%u) ties topics to it.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        self._client = self.client
        self._client.max_inflight_messages_set(50)
        self._client.max_queued_messages_set(10_000)
        self._client.reconnect_delay_set(
            min_delay=max(1, int(reconnect_min_s)), max_delay=max(1, int(reconnect_max_s))
        )
        self._client.will_set(
            topic(device_id, "up", "status"),
            Status(online=False, ts=0.0).to_bytes(),
            qos=1,
            retain=True,
        )
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish

    def _connect_async(self) -> None:
        # Only records where and how to connect (reconnects reuse it); the connecting
        # happens on the network thread.
        session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        session.SessionExpiryInterval = SESSION_NEVER_EXPIRES
        self._client.connect_async(
            self.host, self.port, keepalive=self._keepalive, clean_start=False,
            properties=session,
        )  # fmt: skip

    def start(self) -> None:
        self._connect_async()
        if self._hub is not None:
            self._hub.attach(self)
            return
        self._client.loop_start()

    def stop(self, *, graceful: bool = True) -> None:
        """Disconnect. ``graceful=False`` drops the socket so the broker sends the Will."""
        self._stopping = True
        if graceful and self.connected.is_set():
            info = self._client.publish(
                topic(self.device_id, "up", "status"),
                Status(online=False, ts=time.time()).to_bytes(),
                qos=1,
                retain=True,
            )
            info.wait_for_publish(timeout=2)
            self._client.disconnect()
        elif not graceful:
            self._drop_socket()
        if self._hub is not None:
            self._hub.detach(self)
        else:
            self._client.loop_stop()
        self.connected.clear()

    def _drop_socket(self) -> None:
        """End the TCP connection without an MQTT goodbye (the broker sends the Will).

        Shut down rather than closed: paho then sees the connection end as a network
        failure would look, on whichever thread drives it.
        """
        sock = cast(socket.socket | None, self._client.socket())
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._hub is None:
            sock.close()

    def cut(self, seconds: float) -> None:
        """Drop the connection abruptly (the broker sends the Will) and stay away for
        ``seconds``: a network cut, for the simulator. Then reconnect as usual."""
        self.connected.clear()
        self._acks.forget()
        if self._hub is not None:
            self._cut_until = time.monotonic() + seconds
            self._drop_socket()
            return
        self._client.loop_stop()
        self._drop_socket()

        def back() -> None:
            self._connect_async()
            self._client.loop_start()

        timer = threading.Timer(seconds, back)
        timer.daemon = True
        timer.start()

    # hub mode (the hub's thread) --------------------------------------------------

    def hub_connect(self) -> None:
        """Connect or reconnect; on failure try again later, backing off."""
        if self._stopping or self._hub is None:
            return
        wait = self._cut_until - time.monotonic()
        if wait > 0:
            self._hub.call_later(wait, self.hub_connect)
            return
        try:
            self._client.reconnect()
        except OSError as exc:
            log.info("%s: cannot reach the broker (%s); retrying", self.device_id, exc)
            self._retry_later()

    def _retry_later(self) -> None:
        if self._hub is None or self._stopping:
            return
        delay, self._backoff_s = self._backoff_s, min(self._backoff_s * 2, self._reconnect_max_s)
        self._hub.call_later(delay, self.hub_connect)

    def publish_tracked(
        self, kind: str, payload: bytes, on_ack: Callable[[], None], on_refused: OnRefused
    ) -> bool:
        """Publish at QoS 1; on paho's thread, call ``on_ack`` once the broker has passed
        the message on, or ``on_refused(code, reason)`` when it refused it or nobody was
        subscribed.

        Returns False without publishing while disconnected: the caller keeps the
        message and sends it again after the reconnect.
        """
        if not self.connected.is_set():
            return False
        info = self._client.publish(topic(self.device_id, "up", kind), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        # Registered after publish() returns (never call into paho holding a lock that
        # on_publish takes): the tracker holds a PUBACK that came first.
        self._acks.expect(info.mid, on_ack, on_refused)
        return True

    def publish(self, kind: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        result = self._client.publish(
            topic(self.device_id, "up", kind), payload, qos=qos, retain=retain
        )
        if result.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self._acks.expect(result.mid)  # NO_CONN: paho queued it with a mid
        else:
            log.warning(
                "%s: publish to %s failed: %s", self.device_id, kind, mqtt.error_string(result.rc)
            )

    # paho callbacks (paho's network thread) ---------------------------------------

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("%s: broker refused connection: %s", self.device_id, reason)
            return
        client.subscribe(
            [
                (topic(self.device_id, "down", "desired"), 1),
                (topic(self.device_id, "down", "cmd"), 1),
            ]
        )
        online = client.publish(
            topic(self.device_id, "up", "status"),
            Status(online=True, ts=time.time()).to_bytes(),
            qos=1,
            retain=True,
        )
        self._acks.expect(online.mid)
        self._backoff_s = self._reconnect_min_s
        self.generation += 1
        self.connected.set()
        self._on_connected()

    def _handle_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._acks.settle(mid, int(getattr(reason, "value", 0)), str(reason))

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected.clear()
        self._acks.forget()  # unacknowledged: the outbox sends them again
        if reason.is_failure:
            log.info("%s: disconnected from broker (%s); reconnecting", self.device_id, reason)
        if self._hub is not None and not self._stopping:
            self._retry_later()  # paho's own thread would reconnect; on a hub we do

    def _handle_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        try:
            device, direction, kind = split_topic(message.topic)
        except WireError as exc:
            log.warning("%s: dropped message on unexpected topic: %s", self.device_id, exc)
            return
        if device != self.device_id or direction != "down":
            log.warning("%s: dropped message for %s/%s", self.device_id, device, direction)
            return
        self._on_message(kind, bytes(message.payload))
