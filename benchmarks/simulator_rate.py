"""Benchmark the device simulator: sustained readings/s from one process to a real local Mosquitto.

For QoS 1 and QoS 0 it measures, in the same run and against the same broker:

1. bare: a paho client (same queue and in-flight settings as the simulator) publishing payloads
   built beforehand by the simulator's own stream — the ceiling for one Python process;
2. ours: `run_simulation` unpaced (speed 0) on a fleet with the demo profile's fault rates:
   generation (physics, faults, JSON), scheduling, flow control and accounting included;

each from the first publish to the broker's last acknowledgement (QoS 0: the last write to the
socket), the median of repeated runs, and ours as a ratio to bare. It also reports the stream's
generation rate without MQTT, and a paced run at the goal rate (speed 1) with the rate it
achieved and how far it fell behind schedule. The goal is 5,000 readings/s.

It prints a human-readable report, then one JSON object on the last line of stdout.

Usage:
    python benchmarks/simulator_rate.py --quick        # < 1 minute on 2 cores
    python benchmarks/simulator_rate.py                # more readings and repeats
    python benchmarks/simulator_rate.py --quick --cprofile   # also print the hot path's top functions
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet_cli.local_edge import free_port
from edgehub.broker import Broker, Listener
from simulator.profile import DEMO_PROFILE, SimulatorProfile, load_profile, with_overrides
from simulator.run import run_simulation
from simulator.stream import TelemetryStream

GOAL_RATE_PER_S = 5_000.0
FULL: dict[str, Any] = {"readings": 60_000, "repeats": 5, "devices": 1_000, "paced_s": 10.0}
QUICK: dict[str, Any] = {"readings": 20_000, "repeats": 3, "devices": 500, "paced_s": 4.0}


def bench_profile(devices: int, readings: int, qos: int, port: int) -> SimulatorProfile:
    """Return the demo profile resized: `devices` devices that together produce `readings` readings."""
    demo = load_profile(DEMO_PROFILE)
    rate_per_s = 10.0
    duration_s = readings / (devices * rate_per_s)
    device_types = [{"name": "bench", "count": devices, "rate_per_s": rate_per_s}]
    return with_overrides(
        demo,
        device_types=device_types,
        duration_s=duration_s,
        speed=0.0,
        rate_cap_per_s=None,
        drift=[{"at_fraction": 0.5, "device_fraction": 0.1}],
        mqtt={"port": port, "qos": qos, "client_id": f"bench-ours-{qos}"},
    )


def prebuilt(profile: SimulatorProfile) -> list[tuple[str, bytes]]:
    """Return the (topic, payload) pairs the simulator would send for `profile`."""
    return [(emission.topic, emission.payload) for emission in TelemetryStream.from_profile(profile)]


def bare_rate(messages: list[tuple[str, bytes]], profile: SimulatorProfile, port: int) -> float:
    """Publish pre-built payloads with plain paho; return messages/s until the last is acknowledged."""
    settings = profile.mqtt
    client = mqtt.Client(client_id=f"bench-bare-{settings.qos}", clean_session=True)
    client.max_queued_messages_set(settings.max_queued_messages)
    client.max_inflight_messages_set(settings.max_inflight_messages)
    acked = [0]
    connected = threading.Event()

    def on_publish(c: Any, userdata: Any, mid: int) -> None:
        acked[0] += 1

    client.on_publish = on_publish
    client.on_connect = lambda c, u, f, rc: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit("bare client could not connect")
    qos = settings.qos
    started = time.perf_counter()
    for topic, payload in messages:
        info = client.publish(topic, payload, qos)
        while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            time.sleep(0.0005)
            info = client.publish(topic, payload, qos)
    while acked[0] < len(messages):
        time.sleep(0.001)
    elapsed_s = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return len(messages) / elapsed_s


def ours_rate(profile: SimulatorProfile, port: int, profiler: cProfile.Profile | None = None) -> dict[str, Any]:
    """Run the simulator unpaced; return its messages/s (first publish to last ack) and counts."""
    if profiler is not None:
        profiler.enable()
    report = run_simulation(profile, threading.Event(), port=port)
    if profiler is not None:
        profiler.disable()
    delivery = report.delivery
    active_s = delivery["publish_s"] + delivery["drain_s"]
    return {
        "messages": report.totals["messages"],
        "readings": report.totals["sent"],
        "messages_per_s": report.totals["messages"] / active_s,
        "readings_per_s": report.totals["sent"] / active_s,
        "unacknowledged": delivery["unacknowledged"] + delivery["unsent"],
        "queue_full_waits": delivery["queue_full_waits"],
    }


def generation_rate(profile: SimulatorProfile) -> float:
    """Return emissions/s of the pure stream (no MQTT)."""
    started = time.perf_counter()
    count = sum(1 for _ in TelemetryStream.from_profile(profile))
    return count / (time.perf_counter() - started)


def paced_run(devices: int, duration_s: float, port: int) -> dict[str, Any]:
    """Run at the goal rate in real time (speed 1); return the achieved rate and the worst lag."""
    rate_per_s = GOAL_RATE_PER_S / devices
    base = bench_profile(devices, int(GOAL_RATE_PER_S * duration_s), 1, port)
    profile = with_overrides(
        base,
        device_types=[{"name": "paced", "count": devices, "rate_per_s": rate_per_s}],
        duration_s=duration_s,
        speed=1.0,
        # Silent devices would lower the rate on purpose; every other fault stays on.
        faults={**base.faults.model_dump(), "silent_device_rate": 0.0},
        mqtt={"port": port, "qos": 1, "client_id": "bench-paced"},
    )
    report = run_simulation(profile, threading.Event(), port=port)
    delivery = report.delivery
    return {
        "target_per_s": GOAL_RATE_PER_S,
        "achieved_per_s": round(report.totals["sent"] / delivery["publish_s"], 1),
        "max_lag_s": delivery["max_lag_s"],
        "unacknowledged": delivery["unacknowledged"] + delivery["unsent"],
    }


def top_functions(profiler: cProfile.Profile, limit: int = 20) -> str:
    """Return the profiler's top functions by own time."""
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report, JSON on the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer readings and repeats (< 1 minute)")
    parser.add_argument("--readings", type=int, help="readings per measured run")
    parser.add_argument("--repeats", type=int, help="measured runs per figure (median)")
    parser.add_argument("--devices", type=int, help="simulated devices")
    parser.add_argument("--cprofile", action="store_true", help="print cProfile's top functions of one QoS 1 run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = dict(QUICK if args.quick else FULL)
    for key in ("readings", "repeats", "devices"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "simulator_rate", "config": config, "goal_readings_per_s": GOAL_RATE_PER_S}
    with tempfile.TemporaryDirectory(prefix="simbench-") as workdir:
        port = free_port()
        broker = Broker(Path(workdir), "bench", [Listener("127.0.0.1", port)]).start()
        try:
            generation = bench_profile(config["devices"], config["readings"], 1, port)
            result["generate_only_per_s"] = round(statistics.median(generation_rate(generation) for _ in range(2)), 1)
            print(f"generation only (no MQTT): {result['generate_only_per_s']:,.0f} messages/s")
            for qos in (1, 0):
                profile = bench_profile(config["devices"], config["readings"], qos, port)
                messages = prebuilt(profile)
                bare, ours = [], []
                for _ in range(config["repeats"]):
                    bare.append(bare_rate(messages, profile, port))
                    ours.append(ours_rate(profile, port))
                bare_per_s = statistics.median(bare)
                ours_messages_per_s = statistics.median(o["messages_per_s"] for o in ours)
                ours_readings_per_s = statistics.median(o["readings_per_s"] for o in ours)
                figures = {
                    "messages": len(messages),
                    "bare_messages_per_s": round(bare_per_s, 1),
                    "ours_messages_per_s": round(ours_messages_per_s, 1),
                    "ours_readings_per_s": round(ours_readings_per_s, 1),
                    "ratio_to_bare": round(ours_messages_per_s / bare_per_s, 3),
                    "runs_bare": [round(r) for r in bare],
                    "runs_ours": [round(o["messages_per_s"]) for o in ours],
                    "unacknowledged": sum(o["unacknowledged"] for o in ours),
                    "meets_goal": ours_readings_per_s >= GOAL_RATE_PER_S,
                }
                result[f"qos{qos}"] = figures
                print(
                    f"QoS {qos}: ours {ours_readings_per_s:,.0f} readings/s ({ours_messages_per_s:,.0f} messages/s), "
                    f"bare paho {bare_per_s:,.0f} messages/s, ratio {figures['ratio_to_bare']:.2f} "
                    f"(runs ours {figures['runs_ours']}, bare {figures['runs_bare']})"
                )
            result["paced"] = paced_run(config["devices"], config["paced_s"], port)
            paced = result["paced"]
            print(
                f"paced at {GOAL_RATE_PER_S:,.0f}/s for {config['paced_s']:g} s: "
                f"achieved {paced['achieved_per_s']:,.0f}/s, max lag {paced['max_lag_s']:.3f} s"
            )
            if args.cprofile:
                profiler = cProfile.Profile()
                ours_rate(bench_profile(config["devices"], config["readings"], 1, port), port, profiler)
                print(top_functions(profiler))
        finally:
            broker.stop()
    result["meets_goal"] = bool(result["qos1"]["meets_goal"] and result["qos0"]["meets_goal"])
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
