"""Feed the dashboard from the local IoT Hub: subscribe to every upstream message on its broker.

The dashboard is a viewer, not a system of record (the lake sink is), so it uses a clean session
at QoS 0: after a restart it starts from what arrives next, and a slow dashboard can never make
the hub broker queue messages for it. paho reconnects on its own when the broker goes away.
It logs in as a reader (`edgehub.hub_auth`): it may subscribe, never publish.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import SecretStr

from dashboard.state import FleetState
from edgefleet.hub_wire import HUB_SUBSCRIPTION, KEEPALIVE_S, parse_hub_message
from edgefleet.mqtt_login import AUTH_REFUSALS
from edgefleet.topics import TopicError

logger = logging.getLogger(__name__)

__all__ = ["HubFeed"]

_LOGIN_HINT = "; check --hub-username and --hub-password-file (DASHBOARD_HUB_*) against the sink's users file"


class HubFeed:
    """Subscribe to the hub broker and ingest every upstream message into a FleetState."""

    def __init__(
        self,
        state: FleetState,
        host: str,
        port: int,
        client_id: str | None = None,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
    ) -> None:
        self.state = state
        self.username = username
        self.host = host
        self.port = port
        self.subscribed = threading.Event()
        client = mqtt.Client(
            client_id=client_id or f"edgefleet-dashboard-{os.getpid()}", clean_session=True, protocol=mqtt.MQTTv311
        )
        if username is not None:  # None: an anonymous hub broker (development only)
            client.username_pw_set(username, password.get_secret_value() if password is not None else None)
        self._refused = False  # a refusal is logged once, not at every retry
        client.reconnect_delay_set(min_delay=0.1, max_delay=5)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        self._client: Any = client

    def start(self) -> HubFeed:
        """Connect in the background; paho retries until the hub broker answers."""
        self._client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def _handle_connect(self, client: Any, userdata: Any, flags: Any, rc: int) -> None:
        if rc != 0:
            if not self._refused:
                self._refused = True
                logger.error(
                    "Hub at %s:%d refused the dashboard as %s: %s%s",
                    self.host,
                    self.port,
                    self.username or "an anonymous client",
                    mqtt.connack_string(rc),
                    _LOGIN_HINT if rc in AUTH_REFUSALS else "",
                )
            return
        self._refused = False
        logger.info("Dashboard connected to the hub at %s:%d as %s", self.host, self.port, self.username or "anonymous")
        client.subscribe(HUB_SUBSCRIPTION, qos=0)

    def _handle_subscribe(self, client: Any, userdata: Any, mid: int, granted_qos: Any) -> None:
        self.subscribed.set()

    def _handle_disconnect(self, client: Any, userdata: Any, rc: int) -> None:
        self.subscribed.clear()
        if rc != 0:
            logger.warning(
                "Dashboard lost the hub at %s:%d (%s); reconnecting", self.host, self.port, mqtt.error_string(rc)
            )

    def _handle_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            message = parse_hub_message(msg.topic, msg.payload)
        except TopicError:
            self.state.count_malformed("bad_topic")
            return
        except Exception:  # never let paho's network thread die on one message
            logger.exception("Cannot read hub message on %r", msg.topic)
            self.state.count_malformed("unexpected")
            return
        self.state.ingest(message)
