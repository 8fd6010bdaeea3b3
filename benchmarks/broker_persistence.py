"""Benchmark Mosquitto's persistence settings: cost per message and QoS 1 messages lost to a kill -9.

Mosquitto 2.0 keeps its database in memory and writes it as a whole snapshot on a clean
shutdown and on autosave. For each policy (the old `autosave_interval 30`; `autosave_on_changes`
with 1 and 100 changes per snapshot; and those with the journal plugin of
`edgefleet.broker_journal`, which appends each message before Mosquitto acknowledges it, with
and without an fdatasync per message) it measures, on loopback against
a real broker started by `edgehub.broker.Broker`:

1. offline: a publisher sends single QoS 1 readings (as field devices do) as fast as the broker
   acknowledges them into the persistent session of a subscriber that is gone (the queue grows:
   the worst case);
2. keeping up: the same, with the subscriber connected and acknowledging;
3. offline batches: messages of 50 readings, as the stand-in's module brokers carry them;
4. kill -9: publish into the offline session, kill -9 the broker once every message is
   acknowledged (and, separately, half-way through the stream), restart it on the same
   persistence file, reconnect the subscriber's session and count acknowledged readings that
   never arrive.

Cost figures: messages/s acknowledged (overall and over the last tenth, when the queue is
longest), broker CPU ms per 1,000 messages (/proc/<pid>/stat) and bytes written per message
(/proc/<pid>/io write_bytes), for the first and second half of the offline run: a snapshot
rewrites the whole database, so its cost grows with the queue.

It prints a table, then one JSON object on the last line of stdout.

Usage:
    python benchmarks/broker_persistence.py --quick    # about 2 minutes on 2 cores
    python benchmarks/broker_persistence.py            # a queue twice as long
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet_cli.local_edge import free_port
from edgehub.broker import AUTOSAVE, Autosave, Broker, Listener

HOST = "127.0.0.1"
TOPIC = "bench/readings"
SUBSCRIBER_ID = "bench-persistent-subscriber"


@dataclass(frozen=True, slots=True)
class Policy:
    """When Mosquitto snapshots, and whether the journal plugin writes (and fdatasyncs) each message."""

    autosave: Autosave
    journal: bool = False
    sync: bool = False


POLICIES = {
    "interval 30 (old)": Policy(Autosave(interval=30, on_changes=False)),
    "on changes, 1": Policy(Autosave(interval=1, on_changes=True)),
    "on changes, 100": Policy(Autosave(interval=100, on_changes=True)),
    "1 + journal": Policy(Autosave(interval=1, on_changes=True), journal=True),
    "100 + journal": Policy(AUTOSAVE, journal=True),  # every broker's
    "100 + journal sync": Policy(AUTOSAVE, journal=True, sync=True),
}
# The demo's field devices send 400 readings/s; 10 s of sensor outage queues 4,000 of them, and
# 400 batches of 50 readings are 50 s of it.
QUICK = {"messages": 4_000, "batches": 400, "kill_messages": 2_000}
FULL = {"messages": 8_000, "batches": 800, "kill_messages": 4_000}
READINGS_PER_BATCH = 50
DEMO_RATE_PER_S = 400.0
TIMEOUT_S = 180.0
QUIET_S = 1.5
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def reading(seq: int, readings: int = 1) -> bytes:
    """Return a message numbered `seq`: one ~190-byte reading as a field device sends it, or a batch."""
    features = {"temperature_c": 21.437, "humidity_pct": 48.112, "vibration_mm_s": 1.874, "load_pct": 52.906}
    body = {"schema": "edgefleet.telemetry/1", "device_id": f"dev-{seq % 50:04d}", "seq": seq, "features": features}
    if readings == 1:
        return json.dumps(body, separators=(",", ":")).encode()
    batch = {"schema": "edgefleet.batch/1", "seq": seq, "readings": [body] * readings}
    return json.dumps(batch, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Counters:
    """A broker's cumulative CPU time and bytes written to storage."""

    cpu_s: float
    write_bytes: int

    @classmethod
    def of(cls, pid: int) -> Counters:
        """Read them from /proc."""
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime, stime
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return cls(cpu_s, int(io["write_bytes"]))


@dataclass
class Publisher:
    """A QoS 1 publisher that records acknowledgements and samples the broker at chosen counts."""

    port: int
    broker_pid: int
    sample_at: frozenset[int] = frozenset()
    stop_at: int | None = None
    readings_per_message: int = 1
    acked: list[int] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    samples: dict[int, Counters] = field(default_factory=dict)
    reached: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(client_id=f"bench-publisher-{self.port}", clean_session=True)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        _connect(self.client, self.port)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int) -> None:
        self.acked.append(mid)
        self.ack_times.append(time.monotonic())
        count = len(self.acked)
        if count in self.sample_at:
            self.samples[count] = Counters.of(self.broker_pid)
        if count == self.stop_at:
            self.reached.set()

    def publish(self, messages: int) -> dict[int, int]:
        """Queue `messages` readings; return mid -> seq."""
        size = self.readings_per_message
        return {self.client.publish(TOPIC, reading(seq, size), qos=1).mid: seq for seq in range(messages)}

    def close(self) -> None:
        """Stop the network loop and disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


class Subscriber:
    """The consumer's persistent session (clean_session False, QoS 1), counting what arrives."""

    def __init__(self, port: int) -> None:
        self.received: set[int] = set()
        self.last_at = time.monotonic()
        self.client = mqtt.Client(client_id=SUBSCRIBER_ID, clean_session=False)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        _connect(self.client, port)
        self.client.subscribe(TOPIC, qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("subscription not acknowledged")

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.received.add(int(json.loads(message.payload)["seq"]))
        self.last_at = time.monotonic()

    def wait_quiet(self, expected: int) -> None:
        """Wait until `expected` readings arrived, or nothing new came for a while."""
        deadline = time.monotonic() + TIMEOUT_S
        while len(self.received) < expected and time.monotonic() < deadline:
            if time.monotonic() - self.last_at > QUIET_S:
                return
            time.sleep(0.05)

    def close(self) -> None:
        """Disconnect; the broker keeps the session and queues for it."""
        self.client.disconnect()
        self.client.loop_stop()


def _connect(client: mqtt.Client, port: int) -> None:
    connected = threading.Event()
    client.on_connect = lambda c, userdata, flags, rc: connected.set() if rc == 0 else None
    client.connect(HOST, port, keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError(f"no CONNACK from 127.0.0.1:{port}")


def _wait_acked(publisher: Publisher, messages: int) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while len(publisher.acked) < messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(publisher.acked)} of {messages} acknowledged in {TIMEOUT_S:.0f} s")
        time.sleep(0.01)


def _broker(state_dir: Path, policy: Policy) -> Broker:
    listeners = [Listener(HOST, free_port(HOST))]
    return Broker(
        state_dir,
        "bench",
        listeners,
        persistent=True,
        autosave=policy.autosave,
        journal=policy.journal,
        journal_sync=policy.sync,
    )


def measure_load(
    autosave: Policy, messages: int, *, offline: bool, workdir: Path, readings_per_message: int = 1
) -> dict[str, float]:
    """Publish `messages` readings as fast as acknowledged; return the rates and the broker's costs."""
    broker = _broker(workdir, autosave).start()
    assert broker.pid is not None
    port = broker.listeners[0].port
    try:
        subscriber = Subscriber(port)
        if offline:
            subscriber.close()
        half = messages // 2
        samples = frozenset({half, messages})
        publisher = Publisher(port, broker.pid, sample_at=samples, readings_per_message=readings_per_message)
        before = Counters.of(broker.pid)
        started = time.monotonic()
        publisher.publish(messages)
        _wait_acked(publisher, messages)
        publisher.close()
        if not offline:
            subscriber.wait_quiet(messages)
            subscriber.close()
        times = publisher.ack_times
        tail = messages // 10
        mid, end = publisher.samples[half], publisher.samples[messages]
        return {
            "msgs_per_s": messages / (times[-1] - started),
            "tail_msgs_per_s": tail / (times[-1] - times[-tail - 1]),
            "cpu_ms_per_1k": (end.cpu_s - before.cpu_s) * 1e6 / messages,
            "cpu_ms_per_1k_first_half": (mid.cpu_s - before.cpu_s) * 1e6 / half,
            "cpu_ms_per_1k_second_half": (end.cpu_s - mid.cpu_s) * 1e6 / (messages - half),
            "bytes_per_msg": (end.write_bytes - before.write_bytes) / messages,
            "bytes_per_msg_first_half": (mid.write_bytes - before.write_bytes) / half,
            "bytes_per_msg_second_half": (end.write_bytes - mid.write_bytes) / (messages - half),
        }
    finally:
        broker.stop()


def measure_loss(autosave: Policy, messages: int, *, kill_at: int, workdir: Path) -> dict[str, int]:
    """Kill -9 the broker once `kill_at` readings are acknowledged; return how many acknowledged never arrive."""
    broker = _broker(workdir, autosave).start()
    assert broker.pid is not None
    port = broker.listeners[0].port
    try:
        Subscriber(port).close()
        publisher = Publisher(port, broker.pid, stop_at=kill_at)
        seqs = publisher.publish(messages)
        if not publisher.reached.wait(TIMEOUT_S):
            raise RuntimeError("publisher never reached the kill point")
        broker.kill()
        publisher.client.loop_stop()
        acked = {seqs[mid] for mid in publisher.acked}
        broker.start()  # the same config and persistence file
        subscriber = Subscriber(port)
        subscriber.wait_quiet(len(acked))
        subscriber.close()
        return {"acked": len(acked), "lost": len(acked - subscriber.received)}
    finally:
        broker.stop()


def run(sizes: dict[str, int]) -> dict[str, Any]:
    """Measure every policy; return the figures keyed by policy name."""
    results: dict[str, Any] = {}
    for name, autosave in POLICIES.items():
        with tempfile.TemporaryDirectory(prefix="bench-persist-") as tmp:
            work = Path(tmp)
            results[name] = {
                "autosave": autosave.autosave.config_lines(),
                "journal": "fdatasync" if autosave.sync else "write" if autosave.journal else "none",
                "offline": measure_load(autosave, sizes["messages"], offline=True, workdir=work / "offline"),
                "keeping_up": measure_load(autosave, sizes["messages"], offline=False, workdir=work / "up"),
                "offline_batches": measure_load(
                    autosave,
                    sizes["batches"],
                    offline=True,
                    workdir=work / "batches",
                    readings_per_message=READINGS_PER_BATCH,
                ),
                "kill_after_all_acked": measure_loss(
                    autosave, sizes["kill_messages"], kill_at=sizes["kill_messages"], workdir=work / "kill-end"
                ),
                "kill_mid_stream": measure_loss(
                    autosave,
                    sizes["kill_messages"],
                    kill_at=sizes["kill_messages"] // 2 + 37,
                    workdir=work / "kill-mid",
                ),
            }
    return results


def print_table(results: dict[str, Any], sizes: dict[str, int]) -> None:
    """Print one row per policy and scenario."""
    print(f"QoS 1 readings, {sizes['messages']:,} per load run, {sizes['kill_messages']:,} per kill -9 run")
    head = (
        f"{'policy':<18} {'scenario':<15} {'msgs/s':>8} {'tail/s':>8} {'cpu ms/1k':>10} "
        f"{'(1st|2nd half)':>15} {'B/msg':>8} {'(1st|2nd half)':>17}"
    )
    print(head)
    print("-" * len(head))
    for name, figures in results.items():
        for scenario in ("offline", "keeping_up", "offline_batches"):
            row = figures[scenario]
            halves_cpu = f"{row['cpu_ms_per_1k_first_half']:.0f}|{row['cpu_ms_per_1k_second_half']:.0f}"
            halves_bytes = f"{row['bytes_per_msg_first_half']:,.0f}|{row['bytes_per_msg_second_half']:,.0f}"
            print(
                f"{name:<18} {scenario:<15} {row['msgs_per_s']:>8,.0f} {row['tail_msgs_per_s']:>8,.0f} "
                f"{row['cpu_ms_per_1k']:>10,.0f} {halves_cpu:>15} {row['bytes_per_msg']:>8,.0f} {halves_bytes:>17}"
            )
    print()
    print(f"{'policy':<18} {'lost after kill -9 (all acked)':>32} {'lost after kill -9 (mid-stream)':>33}")
    for name, figures in results.items():
        end, mid = figures["kill_after_all_acked"], figures["kill_mid_stream"]
        print(
            f"{name:<18} {end['lost']:>14,} of {end['acked']:>6,} acked {mid['lost']:>15,} of {mid['acked']:>6,} acked"
        )
    print()
    for role, scenario in (("module brokers (batches)", "offline_batches"), ("field and hub brokers", "offline")):
        name = "100 + journal"
        row = results[name][scenario]
        print(
            f"chosen for the {role}: {name}; with the queue growing, its last tenth still takes "
            f"{row['tail_msgs_per_s']:,.0f} msgs/s, and bytes written per message grow from "
            f"{row['bytes_per_msg_first_half']:,.0f} to {row['bytes_per_msg_second_half']:,.0f} from the first "
            "to the second half (each snapshot rewrites the whole queue)"
        )
    every_change = results["on changes, 1"]["offline"]
    print(
        f"a snapshot per change cannot carry the demo's {DEMO_RATE_PER_S:,.0f} single readings/s: "
        f"{every_change['msgs_per_s']:,.0f} msgs/s, {every_change['tail_msgs_per_s']:,.0f}/s in the last tenth"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report, JSON on the last line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter queue, about 2 minutes")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    results = run(sizes)
    print_table(results, sizes)
    elapsed_s = round(time.monotonic() - started, 1)
    print(json.dumps({"benchmark": "broker_persistence", "sizes": sizes, "elapsed_s": elapsed_s, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
