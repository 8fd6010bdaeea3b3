"""Turn off Nagle's algorithm on every paho-mqtt socket in this process.

paho-mqtt 1.6 (which azure-iot-device 2.x pins) never sets TCP_NODELAY. Small MQTT packets
then wait for the peer's delayed ACK (~40 ms on Linux) whenever one is already in flight:
measured on the edge path, the prediction → upstream leg took 42 ms p50 under load and 1.7 ms
with TCP_NODELAY, at the same throughput. Mosquitto's `set_tcp_nodelay` covers only the
broker's side of each connection. The SDK builds its paho client internally, so the only
place to reach its socket is paho's connection factory.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import paho.mqtt.client as mqtt

_PATCHED = "_edgefleet_nodelay"


def enable_tcp_nodelay() -> None:
    """Make every paho client created in this process connect with TCP_NODELAY (idempotent)."""
    original = mqtt.Client._create_socket_connection
    if getattr(original, _PATCHED, False):
        return

    def create_socket_connection(self: Any) -> Any:
        sock = original(self)
        with contextlib.suppress(OSError):  # not TCP (a proxy or a unix socket): nothing to tune
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    setattr(create_socket_connection, _PATCHED, True)
    mqtt.Client._create_socket_connection = create_socket_connection
