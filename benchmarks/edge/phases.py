"""The edge benchmark's measured phases: throughput and latency on the module path, the bare relay, the 10k bundle."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from benchmarks.edge.bundles import BenchBundle, build_synthetic_bundle
from benchmarks.edge.harness import (
    READING_MARK,
    Arrivals,
    CpuMeter,
    EdgeSession,
    FieldDevices,
    fmt,
    rss_mb,
    running_edge,
    say,
    spawn_child,
)
from edgefleet.bundle import (
    read_manifest,
    verify_bundle,
)
from edgefleet.deployment import Deployment
from edgefleet_cli.local_edge import free_port
from edgehub.broker import Broker, Listener

LATENCY_RATE_PER_S = 1_000.0
SYNTHETIC_DEVICES = 10_000
WARMUP_ROUNDS = 2  # readings per device before measuring: every device model is loaded by then
# Lines the inference module logs on its way up (modules.runtime's format: asctime first).
STARTUP_MARKS = {"bundle_opened": "Bundle ", "ready": "Inference module ready"}


# -- throughput ---------------------------------------------------------------------------------------


@dataclass
class Throughput:
    """One end-to-end throughput run."""

    readings: int
    arrived: int
    elapsed_s: float
    publish_s: float  # how long the field publisher took until the broker acked everything
    cpu_s: dict[str, float]
    stats: dict[str, Any] = field(default_factory=dict)  # inference stats after the run
    sensor_stats: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, int] = field(default_factory=dict)  # everything upstream, metered as IoT Hub does
    # From the first field publish to the last prediction made (its sensor stamp plus its edge latency):
    # the module's own rate, without the upstream window that holds its last batch (None: not known).
    predicted_s: float | None = None

    @property
    def rps(self) -> float:
        """Readings per second, from the first field publish to the last arrival."""
        return self.arrived / max(self.elapsed_s, 1e-9)

    @property
    def predicted_rps(self) -> float | None:
        """Readings per second, from the first field publish to the last prediction made."""
        return None if self.predicted_s is None else self.arrived / max(self.predicted_s, 1e-9)

    @property
    def complete(self) -> bool:
        return self.arrived >= self.readings


@dataclass
class Repeated:
    """Repeated runs of one configuration: the median is the figure, every run is reported."""

    runs: list[Throughput] = field(default_factory=list)
    upstream_other: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return float(np.median([run.rps for run in self.runs]))

    @property
    def rps_all(self) -> list[float]:
        return [run.rps for run in self.runs]

    @property
    def predicted_rps(self) -> float | None:
        """Median readings/s to the last prediction made (None when a run does not know it)."""
        values = [run.predicted_rps for run in self.runs]
        return None if not values or None in values else float(np.median(values))

    @property
    def complete(self) -> bool:
        return all(run.complete for run in self.runs)

    @property
    def last(self) -> Throughput:
        return self.runs[-1]

    def publisher_rps(self) -> float:
        """How fast the field publisher alone got its readings acknowledged (median)."""
        return float(np.median([run.readings / max(run.publish_s, 1e-9) for run in self.runs]))

    def cpu_ms_per_1000(self) -> dict[str, float]:
        """CPU milliseconds per 1,000 readings, per process, over all runs (summed first: ticks are coarse)."""
        arrived = max(sum(run.arrived for run in self.runs), 1)
        names = sorted({name for run in self.runs for name in run.cpu_s})
        return {name: sum(run.cpu_s.get(name, 0.0) for run in self.runs) * 1e6 / arrived for name in names}


def timeout_for(readings: int, floor_rps: float = 50.0) -> float:
    """Return how long to wait for a job: generous, so that a slow mode yields a figure, not an error."""
    return 30.0 + readings / floor_rps


def warm_up(session: EdgeSession, devices: list[str]) -> None:
    """Publish a few readings per device and wait for them (models loaded, connections hot); zero the counters."""
    arrivals = session.upstream.predictions
    readings = WARMUP_ROUNDS * len(devices)
    target = arrivals.count + readings
    session.field.publish(devices, readings)
    if not arrivals.wait(target, timeout_for(readings, 20.0)):
        raise RuntimeError(f"warm-up: {target - arrivals.count} of {readings} predictions never arrived")
    session.reset()


def run_throughput(session: EdgeSession, devices: list[str], readings: int) -> Throughput:
    """Publish `readings` as fast as possible and time them to the last prediction upstream."""
    arrivals = session.upstream.predictions
    target = arrivals.count + readings
    meter = CpuMeter({"sensor": session.pid("sensor"), "inference": session.pid("inference")})
    arrivals.keep()  # bodies are only appended on the measured path; read after the run
    published = session.field.publish(devices, readings, before_go=meter.start)
    done = arrivals.wait(target, timeout_for(readings))
    cpu = meter.stop({"field publisher": published.cpu_s})
    last_predicted_s = last_prediction_s(arrivals.kept())
    return Throughput(
        readings=readings,
        arrived=readings - max(0, target - arrivals.count),
        elapsed_s=(arrivals.last_arrival_s if done else time.time()) - published.first_publish_s,
        publish_s=published.acked_s - published.first_publish_s,
        predicted_s=None if last_predicted_s is None or not done else last_predicted_s - published.first_publish_s,
        cpu_s=cpu,
        stats=session.stats("inference"),
        sensor_stats=session.stats("sensor"),
        upstream=session.upstream.take_metered(),
    )


def prediction_times(body: bytes) -> list[tuple[tuple[str, int], float, float]]:
    """Return each prediction of an upstream body: (device, seq), sensor receipt and prediction done (wall s)."""
    times = []
    for item in json.loads(body)["readings"]:  # the harness kept each body opened
        sensor_s = datetime.fromisoformat(item["edge"]["received_ts"]).timestamp()
        times.append(((item["device_id"], item["seq"]), sensor_s, sensor_s + item["edge"]["latency_ms"] / 1000))
    return times


def last_prediction_s(kept: list[tuple[float, bytes]]) -> float | None:
    """Return when the last of the kept predictions was made (wall s; None when none was kept)."""
    return max((done_s for _, body in kept for _, _, done_s in prediction_times(body)), default=None)


@dataclass
class Latency:
    """Field publish → upstream arrival at a fixed rate, and the legs of that path."""

    rate_per_s: float
    readings: int
    matched: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    achieved_rate_per_s: float
    legs_ms: dict[str, dict[str, float]]
    stats: dict[str, Any]
    sensor_stats: dict[str, Any]
    upstream: dict[str, int]


def percentiles(values: list[float]) -> dict[str, float]:
    """Return p50 and p99 of `values` (empty when there are none)."""
    if not values:
        return {}
    p50, p99 = np.percentile(np.asarray(values, dtype=float), [50, 99])
    return {"p50": float(p50), "p99": float(p99)}


def run_latency(session: EdgeSession, devices: list[str], rate_per_s: float, duration_s: float) -> Latency:
    """Publish at a fixed rate with a unique (device, seq) per reading and match each one to its arrival."""
    arrivals = session.upstream.predictions
    readings = int(rate_per_s * duration_s)
    target = arrivals.count + readings
    arrivals.keep()
    published = session.field.publish(devices, readings, rate_per_s=rate_per_s, keep_times=True)
    arrivals.wait(target, timeout_for(readings))
    # Each prediction carries the sensor's receive stamp and the inference's latency (receipt to
    # prediction done): with our publish and arrival times they split the path into three legs.
    # All are wall-clock times on this one machine.
    stamps: dict[tuple[str, int], tuple[float, float, float]] = {}
    for arrived_s, body in arrivals.kept():
        for key, sensor_s, predicted_s in prediction_times(body):
            stamps[key] = (sensor_s, predicted_s, arrived_s)
    totals: list[float] = []
    legs: dict[str, list[float]] = {"field_to_sensor": [], "sensor_to_prediction": [], "prediction_to_upstream": []}
    for key, sent_s in published.sent_times():
        if key not in stamps:
            continue
        sensor_s, predicted_s, arrived_s = stamps[key]
        totals.append((arrived_s - sent_s) * 1000)
        legs["field_to_sensor"].append((sensor_s - sent_s) * 1000)
        legs["sensor_to_prediction"].append((predicted_s - sensor_s) * 1000)
        legs["prediction_to_upstream"].append((arrived_s - predicted_s) * 1000)
    total = percentiles(totals)
    return Latency(
        rate_per_s=rate_per_s,
        readings=readings,
        matched=len(totals),
        p50_ms=total.get("p50"),
        p99_ms=total.get("p99"),
        max_ms=max(totals) if totals else None,
        achieved_rate_per_s=readings / max(published.last_publish_s - published.first_publish_s, 1e-9),
        legs_ms={name: percentiles(values) for name, values in legs.items()},
        stats=session.stats("inference"),
        sensor_stats=session.stats("sensor"),
        upstream=session.upstream.take_metered(),
    )


def measure_module_path(
    workdir: Path,
    deployment: Deployment,
    bundle: BenchBundle,
    ip_base: str,
    predictor: str,
    readings: int,
    repeats: int,
    latency: tuple[float, float] | None = None,
) -> tuple[Repeated, Latency | None]:
    """Start an edge with `predictor`, warm it up, run the throughput jobs (then the latency job)."""
    say(f"    starting the edge (PREDICTOR={predictor}) ...")
    with running_edge(workdir, deployment, bundle.path, bundle.version, ip_base, predictor) as session:
        warm_up(session, bundle.serving)
        result = Repeated()
        for _ in range(repeats):
            run = run_throughput(session, bundle.serving, readings)
            result.runs.append(run)
            say(f"    {run.rps:,.0f} readings/s" + ("" if run.complete else f" (only {run.arrived:,} arrived)"))
            session.reset()
            if not run.complete:
                break  # its backlog would leak into the next run
        lat = None
        if latency is not None and result.complete:
            lat = run_latency(session, bundle.serving, *latency)
            say(f"    latency p50 {fmt(lat.p50_ms)} ms, p99 {fmt(lat.p99_ms)} ms")
        result.upstream_other = dict(session.upstream.other)
        say("    stopping the edge ...")
    return result, lat


# -- the bare relay -----------------------------------------------------------------------------------


@dataclass
class RelayRuns:
    """The bare relay: one reading per MQTT message, and batched like the sensor."""

    single: Repeated
    batched: Repeated


class RelaySink:
    """A paho subscriber at the end of the bare relay, in this process like the stand-in's upstream."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.arrivals = Arrivals()
        subscribed = threading.Event()
        self.client = mqtt.Client(client_id=f"edge-bench-sink-{os.getpid()}", clean_session=True)
        self.client.on_message = lambda c, userdata, msg: self.arrivals.add(msg.payload.count(READING_MARK), b"")
        self.client.on_subscribe = lambda c, userdata, mid, granted: subscribed.set()
        self.client.on_connect = lambda c, userdata, flags, rc: c.subscribe(topic, qos=1)
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            self.close()
            raise RuntimeError(f"the relay sink could not subscribe to {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_relay_job(
    workdir: Path, host: str, port: int, label: str, devices: list[str], readings: int, relay_args: list[str]
) -> Throughput:
    """Relay `readings` from bench/in to bench/out/<label> through a relay child; time them to the sink."""
    out_topic = f"bench/out/{label}"
    relay = spawn_child(["relay", host, str(port), "bench/in", out_topic, *relay_args])
    try:
        sink = RelaySink(host, port, out_topic)
        try:
            meter = CpuMeter({"relay": relay.pid})
            published = FieldDevices(workdir, host, port, topic="bench/in").publish(
                devices, readings, before_go=meter.start
            )
            done = sink.arrivals.wait(readings, timeout_for(readings))
            cpu = meter.stop({"field publisher": published.cpu_s})
        finally:
            sink.close()
    finally:
        assert relay.stdin is not None
        relay.stdin.close()  # the relay's signal to stop
        relay.wait(10)
    end_s = sink.arrivals.last_arrival_s if done else time.time()
    return Throughput(
        readings=readings,
        arrived=min(readings, sink.arrivals.count),
        elapsed_s=end_s - published.first_publish_s,
        publish_s=published.acked_s - published.first_publish_s,
        cpu_s=cpu,
    )


def measure_bare_relay(
    workdir: Path, devices: list[str], readings: int, repeats: int, batch: tuple[int, int]
) -> RelayRuns:
    """Run the relay one reading per message, then batched like the sensor, on one plain Mosquitto."""
    host = "127.0.0.1"
    # The edge's brokers' generated config (queues, in-flight window, TCP_NODELAY), without TLS.
    broker = Broker(workdir / "bare", "bare", [Listener(host, free_port(host))])
    port = broker.listeners[0].port
    runs = RelayRuns(Repeated(), Repeated())
    try:
        broker.start()
        for index in range(repeats):
            runs.single.runs.append(run_relay_job(workdir, host, port, f"single{index}", devices, readings, []))
            batch_args = [str(batch[0]), str(batch[1])]
            runs.batched.runs.append(
                run_relay_job(workdir, host, port, f"batched{index}", devices, readings, batch_args)
            )
    finally:
        broker.stop()
    return runs


# -- the 10,000-device bundle -------------------------------------------------------------------------


@dataclass
class Synthetic:
    """The 10,000-device bundle: spawn to first prediction, and memory after many devices."""

    devices_in_bundle: int
    model_mb: float
    first_prediction_s: float | None
    startup_marks_s: dict[str, float | None]  # from the module's log, seconds after spawn
    verify_s: float  # edgefleet.bundle.verify_bundle on this bundle in this process (files in page cache)
    served_devices: int
    served_arrived: int
    serve_s: float
    rss_mb: float
    hwm_mb: float
    stats: dict[str, Any]


def startup_marks(log_path: Path, spawned_s: float) -> dict[str, float | None]:
    """Return when the module logged each startup mark, in seconds after `spawned_s` (None when not found).

    Best effort: the log is the module's own, and its wording or format may change.
    """
    marks: dict[str, float | None] = dict.fromkeys(STARTUP_MARKS)
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return marks
    for line in lines:
        try:
            logged_s = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as asctime
        except ValueError:
            continue
        if logged_s < spawned_s - 0.01:
            continue  # an earlier start of the module, same log file
        for name, text in STARTUP_MARKS.items():
            if marks[name] is None and text in line:
                marks[name] = logged_s - spawned_s
    return marks


def queue_for_stopped_inference(session: EdgeSession, device_id: str) -> None:
    """Stop the inference module, then queue one reading for it at the stand-in.

    The stand-in, like edgeHub, holds a message for a module that is not connected (store and
    forward, `edgehub.store`) and delivers it when the module connects again: the reading is
    queued once the router holds it. Should the router not have heard of the disconnect yet, it
    publishes the reading to the module's broker instead, whose persistent session for the
    module keeps it: queued once that broker acknowledged it.
    """
    edge = session.edge
    edge.processes["inference"].stop()
    router = edge.standin.router
    delivered = router.stats().get("to_module", 0)
    held = router.held().get("inference", 0)
    session.field.publish([device_id], 1)
    deadline = time.monotonic() + 10  # the sensor sends it when its batch window closes
    while not (
        router.held().get("inference", 0) > held
        or (router.stats().get("to_module", 0) > delivered and not router.unacknowledged().get("inference", 0))
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the waiting reading never reached the stand-in's queue for the inference module: {router.stats()}"
            )
        time.sleep(0.02)


def measure_synthetic(
    workdir: Path, deployment: Deployment, bundle: BenchBundle, ip_base: str, n_served: int
) -> Synthetic:
    """Build the 10k bundle; time spawn → first prediction with a reading waiting; RSS after `n_served` devices."""
    started = time.perf_counter()
    path, version, device_ids = build_synthetic_bundle(bundle, workdir / "bundle10k", SYNTHETIC_DEVICES)
    model_mb = sum(f.size_bytes for f in read_manifest(path).files()) / 2**20
    say(f"    built in {time.perf_counter() - started:.1f} s ({model_mb:,.0f} MB of model files as hard links)")
    say("    starting the edge, stopping inference, queueing a reading, spawning inference ...")
    with running_edge(workdir / "edge10k", deployment, path, version, ip_base, "bundle") as session:
        arrivals = session.upstream.predictions
        queue_for_stopped_inference(session, device_ids[0])
        target = arrivals.count + 1
        spawned_s = time.time()
        session.edge.start_module("inference", wait=False)
        first = arrivals.wait(target, 60.0)
        first_prediction_s = arrivals.last_arrival_s - spawned_s if first else None
        say(
            f"    first prediction after {fmt(first_prediction_s)} s; one reading from each of {n_served:,} devices ..."
        )
        served = device_ids[1 : n_served + 1]
        target = arrivals.count + len(served)
        published = session.field.publish(served, len(served))
        arrivals.wait(target, timeout_for(len(served), 20.0))
        served_arrived = len(served) - max(0, target - arrivals.count)
        serve_s = arrivals.last_arrival_s - published.first_publish_s
        rss, hwm = rss_mb(session.pid("inference"))
        stats = session.stats("inference")
        # Read now, not at the first prediction: the module logs "ready" after it answered the waiting reading.
        marks = startup_marks(session.edge.processes["inference"].log_path, spawned_s)
        say("    stopping the edge ...")
    started = time.perf_counter()
    problems = verify_bundle(path)
    verify_s = time.perf_counter() - started
    if problems:
        raise RuntimeError(f"the synthetic bundle does not verify: {', '.join(map(str, problems[:3]))}")
    return Synthetic(
        devices_in_bundle=len(device_ids),
        model_mb=model_mb,
        first_prediction_s=first_prediction_s,
        startup_marks_s=marks,
        verify_s=verify_s,
        served_devices=len(served),
        served_arrived=served_arrived,
        serve_s=serve_s,
        rss_mb=rss,
        hwm_mb=hwm,
        stats=stats,
    )
