"""The controller's MQTT connection: the only module that imports paho.

Receives every device report through the shared subscription
(``$share/edgefleet-controllers/edgefleet/v1/dev/+/up/#``), so several controller
replicas split the ingest, and hands the raw ``(topic, payload, retained)`` to the
``deliver`` callback (the ingest queue). paho's types and its network thread stay in here.

Two details worth knowing:

- MQTT 5 brokers need not send retained messages to shared subscriptions, so a second,
  plain subscription to ``up/state`` and ``up/status`` catches up on the devices' retained
  reports at connect; live copies it also receives are skipped (the shared subscription
  delivers those), told apart by their subscription identifiers.
- The session outlives a dropped connection for ``session_expiry_s`` so the broker keeps
  our QoS 1 messages across a network blip; a clean stop ends it at once, because a
  dead member of a shared subscription would keep receiving (and losing) its share.
  With a client id that is the same from one process to the next (``resume``: the
  replica id or the client id is configured), a new process resumes the session too:
  a replica killed and started again within the expiry gets the share the broker
  queued for it meanwhile, which the devices, acknowledged, will not send again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_bundles.puback import PubackTracker
from firmware_bundles.wire import PREFIX, Desired, controller_subscription, topic

log = logging.getLogger(__name__)

SHARED_SUB_ID = 1
CATCH_UP_SUB_ID = 2
CATCH_UP_TOPICS = (f"{PREFIX}/+/up/state", f"{PREFIX}/+/up/status")

Deliver = Callable[[str, bytes, bool], None]


def _properties(packet: int, **values: Any) -> Properties:
    props = Properties(packet)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


class MqttBridge:
    """Subscribe to device reports, publish desired states and command sets; reconnects
    on its own."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        deliver: Deliver,
        keepalive_s: int = 30,
        session_expiry_s: int = 60,
        resume: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self._deliver = deliver
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._resume = resume
        self._connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self._client.max_inflight_messages_set(100)
        self._client.max_queued_messages_set(0)  # unbounded: desired states must not vanish
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_connect_fail = self._handle_connect_fail
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish
        # mid -> callback for desired states whose broker acknowledgement someone awaits.
        self._acks = PubackTracker()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting until :meth:`stop`."""
        self._client.connect_async(
            self.host,
            self.port,
            keepalive=self._keepalive_s,
            clean_start=False if self._resume else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=_properties(
                PacketTypes.CONNECT, SessionExpiryInterval=self._session_expiry_s
            ),
        )
        self._client.loop_start()

    def stop(self) -> None:
        if self._connected.is_set():
            # Expiry 0: the broker forgets us now instead of queueing our share for later.
            self._client.disconnect(
                properties=_properties(PacketTypes.DISCONNECT, SessionExpiryInterval=0)
            )
        else:
            self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def publish_desired(
        self, device_id: str, desired: Desired, on_ack: Callable[[], None] | None = None
    ) -> None:
        """Publish ``desired`` retained at QoS 1; queued by paho while disconnected.

        ``on_ack`` runs (on paho's thread) once the broker has acknowledged it; if the
        connection drops first it never runs, and the caller publishes again later.
        """
        self._publish_retained(device_id, "desired", desired.to_bytes(), on_ack)

    def publish_command(
        self, device_id: str, payload: bytes, on_ack: Callable[[], None] | None = None
    ) -> None:
        """Publish the device's command set (``down/cmd``) retained at QoS 1, as
        :meth:`publish_desired` does; an empty ``payload`` clears the retained one."""
        self._publish_retained(device_id, "cmd", payload, on_ack)

    def _publish_retained(
        self, device_id: str, kind: str, payload: bytes, on_ack: Callable[[], None] | None
    ) -> None:
        info = self._client.publish(topic(device_id, "down", kind), payload, qos=1, retain=True)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("%s: publishing %s failed: %s", device_id, kind, mqtt.error_string(info.rc))
            return
        # A retained message is stored even when nobody is subscribed (PUBACK 0x10):
        # that counts as acknowledged here.
        self._acks.expect(info.mid, on_ack)

    # paho callbacks (paho's network thread) ---------------------------------------

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        client.subscribe(
            controller_subscription(),
            qos=1,
            properties=_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=SHARED_SUB_ID),
        )
        client.subscribe(
            [(t, 1) for t in CATCH_UP_TOPICS],
            properties=_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=CATCH_UP_SUB_ID),
        )
        self._connected.set()
        log.info(
            "connected to broker %s:%d as %s (session resumed: %s)",
            self.host,
            self.port,
            self.client_id,
            bool(getattr(flags, "session_present", False)),
        )

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning("cannot reach the broker at %s:%d; retrying", self.host, self.port)

    def _handle_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._acks.settle(mid, int(getattr(reason, "value", 0)), str(reason))

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        # Unacknowledged: their owners publish again after a while. Forgetting them
        # keeps the tracker bounded across any number of reconnects.
        self._acks.forget()
        if was_connected and reason.is_failure:
            log.warning("lost the broker connection (%s); reconnecting", reason)

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            ids = getattr(msg.properties, "SubscriptionIdentifier", None) or []
            if CATCH_UP_SUB_ID in ids and SHARED_SUB_ID not in ids and not msg.retain:
                return  # a live copy of a message the shared subscription delivers
            self._deliver(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # never let an error escape into paho's loop
            log.exception("cannot hand a message on %r to ingest", getattr(msg, "topic", "?"))
