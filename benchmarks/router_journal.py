"""Measure the edgeHub router's throughput with and without its write-ahead journal.

One plain Mosquitto (no TLS) plays the sensor module's broker; a paho client publishes N events
at QoS 1 as the sensor; the router routes them to `$upstream`, an in-process counter that
reports each message durable at once. Throughput is messages/s from the first publish to the
last message reaching the upstream; the median of `--repeats` runs per mode.

Usage:
    python benchmarks/router_journal.py --messages 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgefleet.journal import Journal  # noqa: E402
from edgefleet.routes import Message, parse_routes  # noqa: E402
from edgefleet_cli.local_edge import free_port  # noqa: E402
from edgehub.broker import Broker, Listener  # noqa: E402
from edgehub.router import BrokerAddress, Router  # noqa: E402

TOPIC = "devices/edge1/modules/sensor/messages/events/%24.on=telemetry"
ROUTES = parse_routes({"up": "FROM /messages/modules/sensor/outputs/telemetry INTO $upstream"})


class Counter:
    def __init__(self, wanted: int) -> None:
        self.count, self.wanted, self.done = 0, wanted, threading.Event()

    def __call__(self, message: Message, on_durable: Callable[[], None] | None = None) -> None:
        if on_durable is not None:
            on_durable()
        self.count += 1
        if self.count >= self.wanted:
            self.done.set()


def run_once(workdir: Path, messages: int, journal: bool) -> float:
    port = free_port()
    body = json.dumps({"schema": "edgefleet.telemetry/1", "device_id": "d", "seq": 1, "features": {"t": 1.0}})
    with Broker(workdir / "broker", "sensor", [Listener("127.0.0.1", port)]):
        counter = Counter(messages)
        router = Router(
            {"sensor": BrokerAddress("127.0.0.1", port)},
            "edge1",
            ROUTES,
            {},
            counter,
            journal=Journal(workdir / "journal") if journal else None,
        ).start()
        try:
            assert router.wait_ready(10)
            client = mqtt.Client(client_id="sensor", protocol=mqtt.MQTTv311)
            client.max_inflight_messages_set(1000)
            client.connect("127.0.0.1", port)
            client.loop_start()
            start = time.perf_counter()
            for _ in range(messages):
                client.publish(TOPIC, body, qos=1)
            assert counter.done.wait(300)
            elapsed = time.perf_counter() - start
            client.disconnect()
            client.loop_stop()
        finally:
            router.stop()
    return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(args.repeats):
        for mode in ("without", "with"):  # interleaved: the machine's load drifts alike for both
            with tempfile.TemporaryDirectory() as workdir:
                rates[mode].append(run_once(Path(workdir), args.messages, mode == "with"))
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    result = {
        "messages": args.messages,
        "repeats": args.repeats,
        "msgs_per_s_without_journal": round(medians["without"]),
        "msgs_per_s_with_journal": round(medians["with"]),
        "ratio_with_to_without": round(medians["with"] / medians["without"], 3),
        "runs": {mode: [round(v) for v in values] for mode, values in rates.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
