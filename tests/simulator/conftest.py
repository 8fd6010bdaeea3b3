"""Fixtures for the simulator: a real Mosquitto on a free port and a paho subscriber that records everything."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgefleet_cli.local_edge import free_port
from edgehub.broker import Broker, Listener
from simulator.profile import SimulatorProfile, parse_profile
from tests.edge_fixtures import wait_for  # noqa: F401 - re-exported for the tests here

TOPIC_FILTER = "fleet/+/telemetry"


def profile(**overrides: Any) -> SimulatorProfile:
    """Return a small valid profile: 20 devices at 10 readings/s for 2 s, unpaced, no faults."""
    data: dict[str, Any] = {
        "seed": 3,
        "duration_s": 2.0,
        "speed": 0,
        "device_types": [{"name": "unit", "count": 20, "rate_per_s": 10.0}],
    }
    data.update(overrides)
    return parse_profile(data)


def decode(payload: bytes) -> dict[str, Any]:
    """Parse a simulator payload, NaN literals included (json accepts them by default)."""
    obj: dict[str, Any] = json.loads(payload)
    return obj


class Subscriber:
    """A paho client on the field broker that keeps every message it receives, in order."""

    def __init__(self, port: int, client_id: str = "test-subscriber", clean_session: bool = True) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(client_id=client_id, clean_session=clean_session, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = lambda c, u, f, rc: c.subscribe(TOPIC_FILTER, qos=1)
        self.client.on_subscribe = lambda c, u, mid, granted: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("subscriber could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(msg.payload)

    def count(self) -> int:
        """Return how many messages arrived."""
        with self._lock:
            return len(self.payloads)

    def keys(self) -> Counter[tuple[str, int]]:
        """Return how often each (device_id, seq) arrived."""
        with self._lock:
            payloads = list(self.payloads)
        return Counter((obj["device_id"], obj["seq"]) for obj in map(decode, payloads))

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Start one plain Mosquitto on a free loopback port for the module's tests."""
    state = tmp_path_factory.mktemp("field-broker")
    started = Broker(Path(state), "field", [Listener("127.0.0.1", free_port())]).start()
    yield started
    started.stop()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    """Subscribe to every device's telemetry topic before the test publishes."""
    sub = Subscriber(broker.listeners[0].port, client_id=f"test-sub-{time.monotonic_ns()}")
    yield sub
    sub.close()
