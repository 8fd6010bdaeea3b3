"""Child processes of `benchmarks/edge_throughput.py`: the field publisher and the bare relay.

Both run as their own processes, as field devices and modules do on an edge: in the benchmark
process they would compete for the GIL with the stand-in's router and the upstream sink, and
the figures would measure that contention instead of the path.

    python benchmarks/_edge_bench_util.py publish <config.json>
    python benchmarks/_edge_bench_util.py relay <host> <port> <in-topic> <out-topic> [<batch-bytes> <window-ms>]

Protocol with the parent (line-based on stdin/stdout): the child connects and prepares, prints
`ready`, waits for a line on stdin (`go`), works, and prints one JSON line with what it did.
The publisher then exits; the relay runs until stdin closes. Only paho and the standard library
are imported, so a child starts in a fraction of a second.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.messages import BatchPacker
from edgefleet.mqtt_login import PasswordFile, tls_context

# paho 1.6 numbers QoS 1 publishes with a 16-bit id and reuses ids once 65,535 are pending:
# keep the queue well below that and retry when it is full.
MAX_QUEUED = 50_000
MAX_INFLIGHT = 200
CONNECT_TIMEOUT_S = 10.0
# A day back: inside the sensor's window around the edge's clock (modules/sensor/settings.py).
TS_ORIGIN = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def reading_payload(device_id: str, seq: int, rng: random.Random) -> bytes:
    """Return one telemetry reading as a field device sends it (features in the bundle's ranges)."""
    ts = (TS_ORIGIN + timedelta(seconds=seq)).isoformat().replace("+00:00", "Z")
    features = {
        "temperature_c": round(rng.gauss(20.0, 7.0), 3),
        "humidity_pct": round(rng.gauss(50.0, 12.0), 3),
        "vibration_mm_s": round(rng.gammavariate(2.0, 1.0), 3),
        "load_pct": round(min(100.0, max(0.0, rng.gauss(50.0, 25.0))), 3),
    }
    obj = {"schema": "edgefleet.telemetry/1", "device_id": device_id, "seq": seq, "ts": ts, "features": features}
    return json.dumps(obj, separators=(",", ":")).encode()


def reading_key(devices: list[str], seq_start: int, index: int) -> tuple[str, int]:
    """Return the (device_id, seq) of the `index`-th reading of a publish job (round-robin over devices)."""
    return devices[index % len(devices)], seq_start + index // len(devices)


def connect(client: mqtt.Client, host: str, port: int) -> None:
    """Connect and start the network loop; raise if the broker does not accept us in time."""
    connected = threading.Event()
    client.on_connect = lambda c, userdata, flags, rc: connected.set() if rc == 0 else None
    client.connect(host, port, keepalive=60)
    client.loop_start()
    if not connected.wait(CONNECT_TIMEOUT_S):
        raise SystemExit(f"could not connect to {host}:{port}")


def publish_qos1(client: mqtt.Client, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
    """Publish at QoS 1, waiting while paho's queue is full (back-pressure from the broker)."""
    info = client.publish(topic, payload, qos=1)
    while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
        time.sleep(0.001)
        info = client.publish(topic, payload, qos=1)
    return info


def run_publisher(config_path: Path) -> None:
    """Publish a job of readings (as fast as possible, or paced) and report when each left."""
    config: dict[str, Any] = json.loads(config_path.read_text())
    devices: list[str] = config["devices"]
    n: int = config["readings"]
    seq_start: int = config["seq_start"]
    rate: float = config.get("rate_per_s") or 0.0
    topic_template: str = config.get("topic", "fleet/{device}/telemetry")
    rng = random.Random(seq_start)
    # Encode every payload before the clock starts: the job measures the path, not json.dumps.
    jobs = []
    for index in range(n):
        device_id, seq = reading_key(devices, seq_start, index)
        jobs.append((topic_template.format(device=device_id), reading_payload(device_id, seq, rng)))
    acked = threading.Semaphore(0)
    client = mqtt.Client(client_id=config["client_id"], clean_session=True, protocol=mqtt.MQTTv311)
    client.max_queued_messages_set(MAX_QUEUED)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.on_publish = lambda c, userdata, mid: acked.release()
    if config.get("ca_file"):  # the secure field broker: TLS, and the gateway identity's password
        client.tls_set_context(tls_context(Path(config["ca_file"])))
        password = PasswordFile.read(config["password_file"]).password.get_secret_value()
        client.username_pw_set(config["username"], password)
    connect(client, config["host"], config["port"])
    print("ready", flush=True)
    sys.stdin.readline()
    sent_s = [0.0] * n
    cpu_started = time.process_time()
    started = time.perf_counter()
    for index, (topic, payload) in enumerate(jobs):
        if rate:
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sent_s[index] = time.time()  # wall clock: the parent compares it with its own arrival times
        publish_qos1(client, topic, payload)
    last_publish_s = time.time()
    for _ in range(n):
        acked.acquire()
    acked_s = time.time()
    client.disconnect()
    client.loop_stop()
    if config.get("times_path"):
        Path(config["times_path"]).write_text(json.dumps(sent_s))
    summary = {
        "readings": n,
        "first_publish_s": sent_s[0] if n else None,
        "last_publish_s": last_publish_s,
        "acked_s": acked_s,
        "cpu_s": time.process_time() - cpu_started,
    }
    print(json.dumps(summary), flush=True)


class Relay:
    """Subscribe to one topic and republish every message (or batches of them) to another."""

    def __init__(self, host: str, port: int, in_topic: str, out_topic: str, batch_bytes: int, window_ms: int) -> None:
        self.in_topic = in_topic
        self.out_topic = out_topic
        self.batch_bytes = batch_bytes
        self.window_s = window_ms / 1000
        self.relayed = 0
        self._lock = threading.Condition()
        self._packer = BatchPacker(batch_bytes)
        self._deadline: float | None = None
        self.client = mqtt.Client(client_id="edge-bench-relay", clean_session=True, protocol=mqtt.MQTTv311)
        # Unbounded queue: the relay publishes from paho's network thread, which must never wait for
        # room (it is the thread that reads the PUBACKs that make room). Jobs stay below 65,535.
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def start(self) -> None:
        """Connect, subscribe and (when batching) start the window flusher."""
        subscribed = threading.Event()
        self.client.on_subscribe = lambda c, userdata, mid, granted: subscribed.set()
        connect(self.client, self.host, self.port)
        self.client.subscribe(self.in_topic, qos=1)
        if not subscribed.wait(CONNECT_TIMEOUT_S):
            raise SystemExit(f"could not subscribe to {self.in_topic}")
        if self.batch_bytes:
            threading.Thread(target=self._flush_loop, daemon=True).start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.relayed += 1
        if not self.batch_bytes:
            publish_qos1(client, self.out_topic, msg.payload)
            return
        # The sensor's packing rule (one definition: edgefleet.messages.BatchPacker) and its window.
        with self._lock:
            full = self._packer.add(msg.payload)
            if full is not None:
                self._deadline = None
            if self._deadline is None:
                self._deadline = time.monotonic() + self.window_s
                self._lock.notify()
        if full is not None:
            publish_qos1(client, self.out_topic, full)

    def _take(self) -> bytes | None:
        self._deadline = None
        return self._packer.take()

    def _flush_loop(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                if self._deadline is None or self._deadline > now:
                    self._lock.wait(None if self._deadline is None else self._deadline - now)
                    continue
                batch = self._take()
            if batch is not None:
                publish_qos1(self.client, self.out_topic, batch)

    def stop(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def run_relay(args: list[str]) -> None:
    """Relay until stdin closes; then print how many messages and how much CPU it used."""
    host, port, in_topic, out_topic = args[0], int(args[1]), args[2], args[3]
    batch_bytes = int(args[4]) if len(args) > 4 else 0
    window_ms = int(args[5]) if len(args) > 5 else 0
    relay = Relay(host, port, in_topic, out_topic, batch_bytes, window_ms)
    relay.start()
    print("ready", flush=True)
    sys.stdin.read()  # the parent closes stdin when it is done
    relay.stop()
    print(json.dumps({"relayed": relay.relayed, "cpu_s": time.process_time()}), flush=True)


def main(argv: list[str]) -> None:
    """Dispatch to one child role."""
    if len(argv) >= 2 and argv[0] == "publish":
        run_publisher(Path(argv[1]))
    elif len(argv) >= 4 and argv[0] == "relay":
        run_relay(argv[1:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
