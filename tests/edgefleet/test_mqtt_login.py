"""LoginClient over a real Mosquitto: a queued burst is read several packets per wake-up, and every message is acked."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from edgefleet.mqtt_login import LoginClient
from edgefleet_cli.local_edge import free_port
from edgehub.broker import Broker, Listener
from tests.edge_fixtures import wait_for

TOPIC = "burst/readings"
MESSAGES = 600


class _CountingClient(LoginClient):
    """Count the network thread's read turns."""

    read_turns = 0

    def loop_read(self, max_packets: int = 1) -> int:
        self.read_turns += 1
        return super().loop_read(max_packets)


def _subscriber(port: int, received: list[bytes]) -> _CountingClient:
    client = _CountingClient(client_id="burst-subscriber", clean_session=False, protocol=mqtt.MQTTv311)
    subscribed = threading.Event()
    client.on_connect = lambda c, u, f, rc: c.subscribe(TOPIC, qos=1)
    client.on_subscribe = lambda c, u, mid, granted: subscribed.set()
    client.on_message = lambda c, u, msg: received.append(msg.payload)
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert subscribed.wait(10)
    return client


def _publish_all(port: int) -> None:
    publisher = mqtt.Client(client_id="burst-publisher", protocol=mqtt.MQTTv311)
    publisher.max_queued_messages_set(0)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    infos = [publisher.publish(TOPIC, b"%06d" % index, qos=1) for index in range(MESSAGES)]
    for info in infos:
        info.wait_for_publish(10)
    publisher.disconnect()
    publisher.loop_stop()


def test_a_subscriber_takes_a_queued_burst_in_few_read_turns_and_acknowledges_every_message(tmp_path: Path):
    port = free_port()
    broker = Broker(tmp_path, "burst", [Listener("127.0.0.1", port)], persistent=True).start()
    received: list[bytes] = []
    try:
        first = _subscriber(port, received)  # creates the session, then goes away
        first.disconnect()
        first.loop_stop()
        _publish_all(port)  # queued by the broker for the absent session

        subscriber = _subscriber(port, received)
        wait_for(lambda: len(received) >= MESSAGES, timeout_s=20)
        # paho 1.6 alone reads one packet per turn for a subscriber: at least one turn per message.
        assert subscriber.read_turns < MESSAGES / 3
        subscriber.disconnect()
        subscriber.loop_stop()

        again = _subscriber(port, received)  # anything not acknowledged would be sent again now
        time.sleep(1.0)
        again.disconnect()
        again.loop_stop()
        assert received == [b"%06d" % index for index in range(MESSAGES)]
    finally:
        broker.stop()
