"""Publish emissions over MQTT with paho-mqtt 1.6: bounded queue, automatic reconnects, no silent drops.

paho 1.6 numbers QoS 1 messages with 16-bit ids and reuses an id once 65,535 are pending, so
the client's queue is capped (`max_queued_messages`, 20,000 by default) and a publish refused
with MQTT_ERR_QUEUE_SIZE is retried after a short wait: a slow broker slows the simulator
down instead of losing readings. QoS 1 messages published while disconnected stay in paho's
queue and go out after paho's loop thread reconnects. Every message paho accepts is counted,
and the run ends by waiting (bounded) for the broker to acknowledge them all.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.mqtt_login import AUTH_REFUSALS, LoginClient, describe_connect_error, tls_context
from simulator.errors import SimulatorError
from simulator.profile import MqttSettings

logger = logging.getLogger(__name__)

__all__ = ["MqttPublisher"]

RECONNECT_MIN_DELAY_S = 0.1
RECONNECT_MAX_DELAY_S = 5.0
# Waiting for room in paho's queue: start short (a local broker acknowledges within microseconds).
_QUEUE_WAIT_MIN_S = 0.0005
_QUEUE_WAIT_MAX_S = 0.01
_DRAIN_POLL_S = 0.005


class MqttPublisher:
    """One paho client publishing at the profile's QoS, with flow control and delivery counters."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        host: str | None = None,
        port: int | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.host = host or settings.host
        self.port = port or settings.port
        self.qos = settings.qos
        self._stop = stop_event or threading.Event()
        self.published = 0  # messages paho accepted (queued or sent)
        self.acknowledged = 0  # QoS 1: PUBACKs; QoS 0: messages written to the socket
        self.queue_full_waits = 0
        self.publish_errors = 0
        self.disconnects = 0
        self.connections = 0
        self.last_error: str | None = None
        self._connected = threading.Event()
        self._refused = False
        self._auth_refused = False
        self._tls_problem: str | None = None  # fatal: connect() gives up
        self._connect_error: str | None = None  # why the last attempt failed, for _on_connect_fail
        self._closing = False
        client = LoginClient(client_id=settings.client_id, clean_session=True, protocol=mqtt.MQTTv311)
        if settings.tls_ca_file is not None:
            # Hostname checking stays on: the CA alone does not make a server trusted.
            client.tls_set_context(tls_context(settings.tls_ca_file))
        if settings.username is not None:
            secret = settings.broker_password()
            client.username_pw_set(settings.username, secret.get_secret_value() if secret is not None else None)
        client.on_connect_error = self._on_connect_error
        client.max_queued_messages_set(settings.max_queued_messages)
        client.max_inflight_messages_set(settings.max_inflight_messages)
        client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    @property
    def address(self) -> str:
        """Return the broker's address as a URL-like string for messages."""
        scheme = "mqtts" if self.settings.tls_ca_file is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """Return whether the client is connected right now."""
        return self._connected.is_set()

    @property
    def unacknowledged(self) -> int:
        """Return how many accepted messages the broker has not acknowledged (QoS 0: not yet written)."""
        return self.published - self.acknowledged

    # -- paho callbacks (paho's loop thread) ---------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: int) -> None:
        if rc != mqtt.CONNACK_ACCEPTED:
            self.last_error = mqtt.connack_string(rc).rstrip(".")
            self._auth_refused = rc in AUTH_REFUSALS
            self._refused = True
            logger.error("Broker %s refused the connection: %s", self.address, self.last_error)
            return
        sock = client.socket()
        if sock is not None:
            # paho never sets TCP_NODELAY: without it a small publish can wait ~40 ms for a delayed ACK.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        if self.connections > 1:
            logger.info("Reconnected to %s; paho resends what it holds", self.address)
        self._connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if self._connect_error is None:
            self.last_error = "nothing accepted the connection there"
        self._connect_error = None

    def _on_connect_error(self, err: OSError) -> None:
        what = describe_connect_error(
            err,
            tls=self.settings.tls_ca_file is not None,
            ca_setting="--ca-file (mqtt.tls_ca_file)",
            host_setting="--host",
            port_setting="--port",
        )
        if what is None:
            return
        self.last_error = self._connect_error = what
        if isinstance(err, ssl.SSLError):
            # A certificate that does not verify will not verify on the next try either: connect() gives up.
            self._tls_problem = what

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, rc: int) -> None:
        self._connected.clear()
        if self._closing or self._refused:  # the refusal's reason says more than "connection refused"
            return
        self.disconnects += 1
        self.last_error = mqtt.error_string(rc)
        logger.warning("Lost the connection to %s (%s); reconnecting", self.address, self.last_error)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int) -> None:
        # Only paho's loop thread writes this counter; the publishing thread only reads it.
        self.acknowledged += 1

    # -- lifecycle ---------------------------------------------------------------------------

    def connect(self) -> bool:
        """Connect (paho's loop thread reconnects later); return False if stopped first, raise if no broker in time."""
        logger.info("Connecting to %s as %r", self.address, self.settings.client_id)
        try:
            self.client.connect_async(self.host, self.port, keepalive=self.settings.keepalive_s)
        except ValueError as err:
            raise SimulatorError(f"bad MQTT address {self.host}:{self.port}: {err}") from err
        self.client.loop_start()
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while not self._connected.wait(0.05):
            if self._stop.is_set():
                self.close()
                return False
            if self._refused:
                self.close()
                hint = (
                    "; check mqtt.username and mqtt.password_file (--username, --password-file) against the "
                    "broker's password file"
                    if self._auth_refused
                    else ""
                )
                raise SimulatorError(
                    f"the MQTT broker at {self.address} refused the connection: {self.last_error}{hint}"
                )
            if self._tls_problem is not None:
                self.close()
                raise SimulatorError(f"cannot connect to the MQTT broker at {self.address}: {self._tls_problem}")
            if time.monotonic() > deadline:
                self.close()
                reason = (self.last_error or "no answer").rstrip(".")
                raise SimulatorError(
                    f"cannot connect to the MQTT broker at {self.address} within "
                    f"{self.settings.connect_timeout_s:g} s: {reason}. Start the broker, or point the simulator "
                    "at it with --host/--port (or mqtt.host/mqtt.port in the profile)"
                )
        return True

    def close(self) -> None:
        """Disconnect and stop paho's loop thread."""
        self._closing = True
        with contextlib.suppress(Exception):  # already disconnected: nothing to undo
            self.client.disconnect()
        self.client.loop_stop()
        self._connected.clear()

    # -- publishing --------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes) -> bool:
        """Hand one message to paho, waiting while its queue is full; return False only when giving up."""
        info = self.client.publish(topic, payload, self.qos)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.published += 1
            return True
        return self._publish_retrying(topic, payload, info.rc)

    def _publish_retrying(self, topic: str, payload: bytes, rc: int) -> bool:
        """Retry a publish paho refused; after a stop request, give up once drain_timeout_s has passed."""
        wait_s = _QUEUE_WAIT_MIN_S
        give_up_at = math.inf
        while True:
            if rc == mqtt.MQTT_ERR_SUCCESS:
                self.published += 1
                return True
            if rc == mqtt.MQTT_ERR_NO_CONN and self.qos > 0:
                # paho keeps a QoS 1 message published while disconnected and sends it after reconnecting.
                self.published += 1
                return True
            if rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                self.queue_full_waits += 1
            elif rc != mqtt.MQTT_ERR_NO_CONN:  # QoS 0 while disconnected: wait for the connection instead
                self.publish_errors += 1
                logger.error("paho refused a message to %s: %s", topic, mqtt.error_string(rc))
                return False
            if self._stop.is_set() and give_up_at == math.inf:
                give_up_at = time.monotonic() + self.settings.drain_timeout_s
            if time.monotonic() > give_up_at:
                return False
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, _QUEUE_WAIT_MAX_S)
            rc = self.client.publish(topic, payload, self.qos).rc

    def drain(self, timeout_s: float | None = None) -> float:
        """Wait until the broker acknowledged every accepted message, or `timeout_s`; return seconds waited."""
        timeout_s = self.settings.drain_timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        deadline = started + timeout_s
        while self.acknowledged < self.published and time.monotonic() < deadline:
            if self.qos == 0 and not self.connected:
                break  # QoS 0 messages that were waiting in the socket buffer are gone with the connection
            time.sleep(_DRAIN_POLL_S)
        waited_s = time.monotonic() - started
        if self.unacknowledged:
            logger.warning(
                "%d of %d messages not acknowledged by %s after %.1f s",
                self.unacknowledged,
                self.published,
                self.address,
                waited_s,
            )
        return waited_s

    def counters(self) -> dict[str, Any]:
        """Return the delivery counters."""
        return {
            "qos": self.qos,
            "published": self.published,
            "acknowledged": self.acknowledged,
            "unacknowledged": self.unacknowledged,
            "queue_full_waits": self.queue_full_waits,
            "publish_errors": self.publish_errors,
            "disconnects": self.disconnects,
        }
