"""The local IoT Hub as an MQTT hop: the stand-in forwards `$upstream` to it; the lake sink reads it.

In one process (`edgefleet up`, the tests) the stand-in hands `$upstream` messages straight to
the `LakeSink`. In containers the sink is its own service, like IoT Hub is on a real device:
the stand-in publishes every `$upstream` message to the sink's broker with `HubPublisher`, and
the sink (`edgefleet sink`, see `edgefleet.edgehub.sink_service`) subscribes with a persistent
session, so a sink restart or a slow parquet flush loses nothing.

Wire form, one MQTT message per routed message, QoS 1:
`devices/{device}/modules/{module}/messages/{kind}/{properties}` where `kind` is `events`
(device-to-cloud telemetry) or `twinChangeNotifications`, and `properties` encodes the output
(`$.on`), the system properties (edgeHub's `$.ct`, `$.ce`, ... wire names) and the application
properties exactly as a module's own event topic does. The body is the message body, untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.edgehub.topics import (
    INCOMING_SYSTEM_PROPERTIES,
    OUTPUT_NAME_KEY,
    TopicError,
    encode_properties,
    parse_event_topic,
)
from edgefleet.errors import EdgefleetError
from edgefleet.mqtt_tuning import enable_tcp_nodelay
from edgefleet.routes import Message

logger = logging.getLogger(__name__)

__all__ = [
    "HUB_SUBSCRIPTION",
    "HubAddressError",
    "HubPublisher",
    "format_hub_topic",
    "parse_hub_address",
    "parse_hub_message",
]

HUB_SUBSCRIPTION = "devices/+/modules/+/messages/#"
_KIND_SEGMENTS = {"telemetry": "events", "twin_change_notification": "twinChangeNotifications"}
_SEGMENT_KINDS = {segment: kind for kind, segment in _KIND_SEGMENTS.items()}
_SYSTEM_WIRE_NAMES = {name: wire for wire, name in INCOMING_SYSTEM_PROPERTIES.items()}
# Publishes not yet acknowledged by the hub broker; `__call__` waits above this (back-pressure
# reaches the router's upstream queue instead of growing paho's queue without bound).
PUBLISH_WINDOW = 2_000
KEEPALIVE_S = 30
CLOSE_TIMEOUT_S = 30.0


class HubAddressError(EdgefleetError):
    """Raise when a hub address is not HOST:PORT."""


def parse_hub_address(text: str) -> tuple[str, int]:
    """Return (host, port) from `HOST:PORT`, or raise saying how to write it."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HubAddressError(f"{text!r} is not HOST:PORT; write e.g. sink:1883 or 127.0.0.1:1883")
    return host, int(port_text)


def format_hub_topic(message: Message) -> str:
    """Return the hub topic that carries a routed message's identity, output and properties."""
    segment = _KIND_SEGMENTS.get(message.kind, "events")
    pairs: list[tuple[str, str]] = []
    if message.output is not None:
        pairs.append((OUTPUT_NAME_KEY, message.output))
    for name, value in message.system_properties.items():
        wire = _SYSTEM_WIRE_NAMES.get(name)
        if wire is not None and value is not None:
            pairs.append((wire, value))
    pairs.extend(message.properties.items())
    module = message.connection_module_id or "$device"
    return f"devices/{message.connection_device_id}/modules/{module}/messages/{segment}/{encode_properties(pairs)}"


def parse_hub_message(topic: str, payload: bytes) -> Message:
    """Rebuild the routed message from a hub topic and body, or raise TopicError."""
    parts = topic.split("/", 6)
    kind = _SEGMENT_KINDS.get(parts[5]) if len(parts) > 5 else None
    if kind is None:
        raise TopicError(f"not a hub message topic: {topic!r}")
    # Same shape as a module's event topic once the kind segment reads `events`.
    event = parse_event_topic("/".join([*parts[:5], "events", *parts[6:]]))
    return Message(
        connection_device_id=event.device_id,
        connection_module_id=None if event.module_id == "$device" else event.module_id,
        output=event.output,
        properties=event.properties,
        system_properties=event.system_properties,
        body=payload,
        kind=kind,  # type: ignore[arg-type]  # one of MessageKind by construction
    )


class HubPublisher:
    """The stand-in's `$upstream` callback when the lake sink runs elsewhere: publish to its broker."""

    def __init__(self, host: str, port: int, client_id: str, *, window: int = PUBLISH_WINDOW) -> None:
        self.host = host
        self.port = port
        self.window = window
        self._cond = threading.Condition()
        self._outstanding = 0
        self._published = 0
        self._closed = False
        self.connected = threading.Event()
        enable_tcp_nodelay()
        # A persistent session and paho's own retry of unacknowledged QoS 1 publishes: a hub
        # broker restart delays upstream messages, it does not lose them.
        client = mqtt.Client(client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=0.05, max_delay=2)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        self._client = client

    def start(self) -> HubPublisher:
        """Connect in the background; paho retries until the hub broker answers."""
        self._client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        self._client.loop_start()
        return self

    def __call__(self, message: Message) -> None:
        """Publish one message at QoS 1, waiting while the window of unacknowledged ones is full."""
        with self._cond:
            while self._outstanding >= self.window and not self._closed:
                self._cond.wait(timeout=1.0)
            if self._closed:
                raise RuntimeError("HubPublisher is closed")
            self._outstanding += 1  # before publish(): the PUBACK may arrive first
        info = self._client.publish(format_hub_topic(message), message.body, qos=1)
        # NO_CONN keeps the message: paho sends it once connected.
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            with self._cond:
                self._outstanding -= 1
            raise RuntimeError(f"cannot publish to the hub at {self.host}:{self.port}: {mqtt.error_string(info.rc)}")

    def outstanding(self) -> int:
        """Return how many publishes the hub broker has not acknowledged yet."""
        with self._cond:
            return self._outstanding

    def stats(self) -> dict[str, int]:
        """Return counters: published (acknowledged) and outstanding."""
        with self._cond:
            return {"published": self._published, "outstanding": self._outstanding}

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait until the hub acknowledged everything (up to `timeout_s`), then disconnect; return if all were."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._outstanding > 0 and time.monotonic() < deadline:
                self._cond.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            left = self._outstanding
            self._closed = True
            self._cond.notify_all()
        if left:
            logger.warning(
                "Hub at %s:%d did not acknowledge %d upstream message(s) in time", self.host, self.port, left
            )
        self._client.disconnect()
        self._client.loop_stop()
        return left == 0

    # -- paho callbacks (network thread) --------------------------------------------------------

    def _handle_connect(self, client: Any, userdata: Any, flags: Any, rc: int) -> None:
        if rc != 0:
            logger.warning("Hub at %s:%d refused the connection: %s", self.host, self.port, mqtt.connack_string(rc))
            return
        logger.info("Connected to the hub at %s:%d", self.host, self.port)
        self.connected.set()

    def _handle_disconnect(self, client: Any, userdata: Any, rc: int) -> None:
        self.connected.clear()
        if rc != 0 and not self._closed:
            logger.warning("Lost the hub at %s:%d (%s); reconnecting", self.host, self.port, mqtt.error_string(rc))

    def _handle_publish(self, client: Any, userdata: Any, mid: int) -> None:
        with self._cond:
            self._outstanding -= 1
            self._published += 1
            self._cond.notify_all()
