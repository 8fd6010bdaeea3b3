"""The local IoT Hub as an MQTT hop: the stand-in forwards `$upstream` to it; the lake sink reads it.

In one process (`edgefleet up`, the tests) the stand-in hands `$upstream` messages straight to
the `LakeSink`. In containers the sink is its own service, like IoT Hub is on a real device:
the stand-in publishes every `$upstream` message to the sink's broker with `HubPublisher`, and
the sink (`python -m edgehub.sink_service`) subscribes with a persistent session, so a sink
restart or a slow parquet flush loses nothing. The wire form is `edgefleet.hub_wire`'s.
A message is durable for the stand-in once the hub broker acknowledged it (`on_durable`).
The hub broker takes the stand-in by user name and password (`edgehub.hub_auth`), without TLS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import SecretStr

from edgefleet.hub_wire import KEEPALIVE_S, format_hub_topic
from edgefleet.mqtt_login import AUTH_REFUSALS
from edgefleet.mqtt_tuning import enable_tcp_nodelay
from edgefleet.routes import Message
from edgehub.acks import PubackBook

logger = logging.getLogger(__name__)

__all__ = ["HubPublisher"]

# Publishes not yet acknowledged by the hub broker; `__call__` waits above this (back-pressure
# reaches the router's upstream queue instead of growing paho's queue without bound).
PUBLISH_WINDOW = 2_000
CLOSE_TIMEOUT_S = 30.0
_LOGIN_HINT = (
    "; check --upstream-username and --upstream-password-file (EDGEHUB_UPSTREAM_*) against the sink's users file"
)


class HubPublisher:
    """The stand-in's `Upstream` when the lake sink runs elsewhere: publish to its broker."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        window: int = PUBLISH_WINDOW,
        username: str | None = None,
        password: SecretStr | None = None,
    ) -> None:
        self.host = host
        self.username = username
        self.port = port
        self.window = window
        self._cond = threading.Condition()
        self._outstanding = 0
        self._published = 0
        self._closed = False
        self._acks = PubackBook(f"the hub at {host}:{port}")
        self.connected = threading.Event()
        enable_tcp_nodelay()
        # A persistent session and paho's own retry of unacknowledged QoS 1 publishes: a hub
        # broker restart delays upstream messages, it does not lose them.
        client = mqtt.Client(client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
        if username is not None:  # None: an anonymous hub broker (development only)
            client.username_pw_set(username, password.get_secret_value() if password is not None else None)
        self._refused = False  # a refusal is logged once, not at every retry
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

    def __call__(self, message: Message, on_durable: Callable[[], None] | None = None) -> None:
        """Publish one message at QoS 1 (`on_durable` runs at the hub's PUBACK); wait while the window is full."""
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
        # Outside our lock: paho runs on_publish holding its own, see edgehub.acks.
        self._acks.register(info.mid, on_durable)

    def outstanding(self) -> int:
        """Return how many publishes the hub broker has not acknowledged yet."""
        with self._cond:
            return self._outstanding

    def stats(self) -> dict[str, int]:
        """Return counters: published (acknowledged) and outstanding."""
        with self._cond:
            return {"published": self._published, "outstanding": self._outstanding}

    def healthy(self) -> bool:
        """Return whether the hub broker is connected."""
        return self.connected.is_set()

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
            if not self._refused:
                self._refused = True
                logger.error(
                    "Hub at %s:%d refused the connection as %s: %s%s",
                    self.host,
                    self.port,
                    self.username or "an anonymous client",
                    mqtt.connack_string(rc),
                    _LOGIN_HINT if rc in AUTH_REFUSALS else "",
                )
            return
        self._refused = False
        logger.info("Connected to the hub at %s:%d as %s", self.host, self.port, self.username or "anonymous")
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
        self._acks.acknowledged(mid)
