"""Benchmark the edge path: field MQTT → sensor → edgeHub stand-in → inference → upstream.

One run builds a small real bundle (device models restricted to RandomForest, so the naive
baseline pays a realistic per-call cost) and measures, each figure beside its baseline:

1. bare relay: a paho subscribe→republish relay on one plain Mosquitto (no TLS, no modules), one
   reading per MQTT message, and batched like the sensor (`maxBatchBytes`, `batchWindowMs`);
2. ceiling: the module path with the inference module in pass-through mode (`PREDICTOR=passthrough`);
3. ours: the module path with `PREDICTOR=bundle` (ONNX, many readings per model call), as a
   ratio to the ceiling; then latency p50/p99 from field publish to arrival upstream at a fixed
   1,000 readings/s, beside the sensor's batch window, split into three legs with the stamps
   each prediction carries (sensor receipt, inference latency);
4. naive: the module path with `PREDICTOR=naive-sklearn` (joblib, one `predict` per reading), on
   fewer readings (it is a rate), and ours/naive;
5. a synthetic 10,000-device bundle (one trained device's files under 10,000 ids, hard links, a
   proper manifest): time from spawning the inference process to the first prediction upstream
   (a reading is already waiting for it), and the module's RSS after it served many devices.

It also reports IoT Hub 4 KB units per 1,000 predictions (inference `stats`) and all upstream
units (sensor telemetry + predictions) per 1,000 readings, at 1,000 readings/s and at full speed.

Throughput is readings/s from the first field publish to the last prediction's arrival at the
upstream callback: the median of repeated runs, each after a warm-up that loaded every device's
model and a reset of the modules' counters. The field publisher and the relay are child processes
(`_edge_bench_util.py`); the stand-in's router and the upstream callback run in this process.
CPU seconds of every process are sampled around each run to show where the time goes.

It prints a human-readable report, then one JSON object on the last line of stdout. It never
asserts: the `meets` booleans say which targets were reached. A phase that fails leaves its
figures null, names the error under `errors`, keeps the work directory (module logs) and makes
the exit status 1.

Usage:
    python benchmarks/edge_throughput.py --quick          # < 3 minutes on 2 cores
    python benchmarks/edge_throughput.py                  # ~3-4 minutes: more readings, 10,000 devices served
    python benchmarks/edge_throughput.py --quick --readings 5000 --repeats 1 --workdir /tmp/edge-bench --keep
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import paho.mqtt.client as mqtt

from edgefleet.bundle import (
    MANIFEST_NAME,
    MODELS_DIR,
    BundleManifest,
    ModelFile,
    model_file_stem,
    read_manifest,
    verify_bundle,
)
from edgefleet.deployment import Deployment, load_deployment
from edgefleet.routes import Message
from edgefleet_cli.local_edge import LocalEdge, free_port
from edgehub.broker import Broker, Listener
from simulator.physics import FEATURES

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "deployment" / "deployment.template.json"
CHILD = Path(__file__).resolve().with_name("_edge_bench_util.py")
DESCRIPTION = "Benchmark the edge path: bare relay, pass-through ceiling, ours, naive sklearn, latency, 10k bundle."
FULL_DEFAULTS: dict[str, Any] = {
    "readings": 40_000,
    "repeats": 5,
    "naive_readings": 8_000,
    "latency_s": 10.0,
    "rss_devices": 10_000,
    "bundle_devices": 50,
    "bundle_rows": 300,
}
QUICK_DEFAULTS: dict[str, Any] = {
    "readings": 12_000,
    "repeats": 2,
    "naive_readings": 2_000,
    "latency_s": 5.0,
    "rss_devices": 2_000,
    "bundle_devices": 30,
    "bundle_rows": 300,
}
LATENCY_RATE_PER_S = 1_000.0
SYNTHETIC_DEVICES = 10_000
DEVICE_FAMILY = "random_forest"  # the naive baseline's per-call cost is then a forest's, as in production
WARMUP_ROUNDS = 2  # readings per device before measuring: every device model is loaded by then
LATENCY_BUDGET_MS = 20.0  # the p99 target is this on top of the sensor's batch window
TARGETS: dict[str, float] = {
    "ours_vs_ceiling": 0.70,
    "ours_vs_naive": 20.0,
    "latency_p99_ms": math.nan,  # LATENCY_BUDGET_MS + the batch window, set once the manifest is read
    "bundle10k_rss_mb": 500.0,
    "bundle10k_first_prediction_s": 2.0,
    "units_4kb_per_1000_predictions": 100.0,
}
# Metrics that must stay at or below their target; all others must reach at least theirs.
AT_MOST = frozenset(
    {"latency_p99_ms", "bundle10k_rss_mb", "bundle10k_first_prediction_s", "units_4kb_per_1000_predictions"}
)
PREDICTION_MARK = b'"prediction":'  # once per prediction object in a batch envelope
READING_MARK = b'"seq":'  # once per reading object
# Lines the inference module logs on its way up (modules.runtime's format: asctime first).
STARTUP_MARKS = {"bundle_opened": "Bundle ", "ready": "Inference module ready"}
CLK_TCK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")
_children: list[subprocess.Popen[str]] = []  # every child we start, killed at exit if still running


def say(message: str) -> None:
    """Print one progress line of the report right away."""
    print(message, flush=True)


# -- processes and CPU time ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of a process (all its threads), 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> tuple[float, float]:
    """Return (VmRSS, VmHWM) of a process in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return values["VmRSS"], values["VmHWM"]


def mosquitto_children() -> list[int]:
    """Return the pids of the Mosquitto processes this benchmark started (our children named mosquitto)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == me and name == "mosquitto":
            found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds per process between `start()` and `stop()` (10 ms resolution)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {**pids, "bench (router, sink)": os.getpid()}
        self.brokers = mosquitto_children()
        self._before: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        sample["mosquitto (all)"] = sum(cpu_seconds(pid) for pid in self.brokers)
        return sample

    def start(self) -> None:
        self._before = self._sample()

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Return CPU seconds used per process since `start()`, plus `extra` (children that report their own)."""
        after = self._sample()
        used = {name: after[name] - self._before[name] for name in after}
        used.update(extra or {})
        return used


def spawn_child(args: list[str]) -> subprocess.Popen[str]:
    """Start a `_edge_bench_util.py` child and wait for its `ready` line."""
    # stderr to a file, not a pipe nobody reads: a chatty child would block once the pipe is full.
    with tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        _children.append(child)
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if line != "ready":
            child.kill()
            child.wait(5)
            stderr.seek(0)
            raise RuntimeError(f"benchmark child {args[0]} did not start: {line}{stderr.read()[-2000:]}")
    return child


def stop_children() -> None:
    """Kill every child still running (an error or Ctrl-C left it behind)."""
    for child in _children:
        if child.poll() is None:
            child.kill()
            child.wait(5)


# -- arrivals -----------------------------------------------------------------------------------------


class Arrivals:
    """Count readings arriving at the end of a path, remember the last arrival, optionally keep the bodies."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0
        self.last_arrival_s = 0.0
        self._kept: list[tuple[float, bytes]] | None = None

    def add(self, count: int, body: bytes) -> None:
        """Record one message carrying `count` readings (called on a network or router thread)."""
        now = time.time()
        with self._cond:
            self.count += count
            self.last_arrival_s = now
            if self._kept is not None:
                self._kept.append((now, body))
            self._cond.notify_all()

    def keep(self) -> None:
        """Start keeping bodies with their arrival times (for latency)."""
        with self._cond:
            self._kept = []

    def kept(self) -> list[tuple[float, bytes]]:
        """Stop keeping bodies and return those kept."""
        with self._cond:
            kept, self._kept = self._kept or [], None
            return kept

    def wait(self, total: int, timeout_s: float) -> bool:
        """Wait until `total` readings have arrived since the start; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.count < total:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True


class Upstream:
    """The stand-in's `Upstream` (`edgehub.upstream`): counts predictions; notes anything unexpected.

    It runs on the router's upstream thread, in this process, so it only counts (a C-level
    scan of the body) and appends: bodies are parsed after the run, not on the measured path.
    """

    def __init__(self) -> None:
        self.predictions = Arrivals()
        self.other: Counter[str] = Counter()  # dead letters, alerts: a sign that something went wrong

    def __call__(self, message: Message) -> None:
        if message.connection_module_id == "inference" and message.output == "predictions":
            self.predictions.add(message.body.count(PREDICTION_MARK), message.body)
        elif not (message.connection_module_id == "sensor" and message.output == "telemetry"):
            self.other[f"{message.connection_module_id}/{message.output}"] += 1

    def stats(self) -> dict[str, int]:
        return dict(self.other)

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release: the counts are read after the run."""


# -- the field publisher ------------------------------------------------------------------------------


@dataclass
class Published:
    """What a publisher child reported about one job."""

    devices: list[str]
    seq_start: int
    first_publish_s: float
    last_publish_s: float
    acked_s: float
    cpu_s: float
    sent_s: list[float] | None = None

    def sent_times(self) -> Iterator[tuple[tuple[str, int], float]]:
        """Yield ((device_id, seq), publish time) of every reading (_edge_bench_util.reading_key's order)."""
        assert self.sent_s is not None
        n_devices = len(self.devices)
        for index, sent in enumerate(self.sent_s):
            yield (self.devices[index % n_devices], self.seq_start + index // n_devices), sent


class FieldDevices:
    """Publish jobs of readings to one broker, keeping every (device, seq) unique.

    The sensor drops a seq it has seen recently as a QoS 1 redelivery, so each job continues
    every device's seq where the previous job on the same edge stopped.
    """

    def __init__(self, workdir: Path, host: str, port: int, topic: str = "fleet/{device}/telemetry") -> None:
        self.workdir = workdir
        self.host = host
        self.port = port
        self.topic = topic
        self.next_seq = 1  # seq 0 reads as a device restart to the sensor
        self._jobs = 0

    def publish(
        self,
        devices: list[str],
        readings: int,
        *,
        rate_per_s: float = 0.0,
        keep_times: bool = False,
        before_go: Callable[[], None] | None = None,
    ) -> Published:
        """Run one publisher child: `readings` round-robin over `devices`; return once the broker acked all."""
        self._jobs += 1
        seq_start = self.next_seq
        self.next_seq += math.ceil(readings / len(devices)) + 1
        name = f"publish-{os.getpid()}-{id(self)}-{self._jobs}"
        config_path = self.workdir / f"{name}.json"
        times_path = self.workdir / f"{name}-times.json"
        config = {
            "host": self.host,
            "port": self.port,
            "client_id": f"edge-bench-{name}",
            "devices": devices,
            "readings": readings,
            "seq_start": seq_start,
            "rate_per_s": rate_per_s,
            "topic": self.topic,
            "times_path": str(times_path) if keep_times else None,
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(config))
        child = spawn_child(["publish", str(config_path)])
        assert child.stdin is not None and child.stdout is not None
        if before_go is not None:
            before_go()
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        child.wait(30)
        if not line:
            raise RuntimeError(f"the publisher child exited with {child.returncode} before reporting")
        summary = json.loads(line)
        return Published(
            devices=devices,
            seq_start=seq_start,
            first_publish_s=summary["first_publish_s"],
            last_publish_s=summary["last_publish_s"],
            acked_s=summary["acked_s"],
            cpu_s=summary["cpu_s"],
            sent_s=json.loads(times_path.read_text()) if keep_times else None,
        )


# -- bundles ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchBundle:
    """The bundle the module runs use, and which of its devices their own model serves."""

    path: Path
    version: str
    serving: list[str]  # devices routed to their own model (not the fleet fallback)
    family: str
    n_devices: int
    build_s: float


def device_served(manifest: BundleManifest, device_id: str, threshold: float) -> bool:
    """Return whether the inference module routes `device_id` to its own model (its Predictor's rule)."""
    entry = manifest.devices[device_id]
    if entry.status != "trained" or entry.joblib is None:
        return False
    holdout, fleet = entry.holdout, entry.fleet_holdout
    return holdout is None or fleet is None or fleet.mse <= 0 or holdout.mse <= threshold * fleet.mse


def build_bundle(workdir: Path, n_devices: int, rows: int, threshold: float) -> BenchBundle:
    """Train a real bundle in this process (no Spark), with RandomForest device models only."""
    # Training imports (pandas, skl2onnx) cost a second: only this phase needs them.
    import pandas as pd

    from cloud_training.device_training import TrainingConfig
    from cloud_training.export import write_bundle
    from cloud_training.fleet import train_fleet_locally
    from simulator.history import HistorySpec, generate_history

    started = time.perf_counter()
    spec = HistorySpec(n_devices=n_devices, rows_per_device=rows, seed=7)
    history = generate_history(spec)
    config = TrainingConfig(
        features=FEATURES,
        families=(DEVICE_FAMILY,),
        reference_ts_s=pd.Timestamp(spec.end_ts).timestamp(),
        fleet_rows_per_device=200,
    )
    results, fleet = train_fleet_locally((group for _, group in history.groupby("device_id")), config)
    manifest = write_bundle(workdir / "bundle", results, fleet, config)
    served = sorted(d for d in manifest.devices if device_served(manifest, d, threshold))
    families = Counter(e.family for e in manifest.devices.values() if e.family is not None)
    return BenchBundle(
        path=workdir / "bundle",
        version=manifest.bundle_version,
        serving=served,
        family=", ".join(f"{name} ({count})" for name, count in families.most_common()),
        n_devices=len(manifest.devices),
        build_s=time.perf_counter() - started,
    )


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link (instant, no disk space) or, across file systems, copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def build_synthetic_bundle(source: BenchBundle, out: Path, n_devices: int) -> tuple[Path, str, list[str]]:
    """Replicate one served device's model files under `n_devices` ids, every file pinned in the manifest.

    The copies have the same content, so each entry reuses the original sha256 and size; only
    the paths change. Returns (bundle dir, bundle version, device ids).
    """
    manifest = read_manifest(source.path)
    template = manifest.devices[source.serving[0]]
    if template.joblib is None or template.onnx is None:
        raise RuntimeError(f"device {source.serving[0]} has no ONNX file to replicate")
    (out / MODELS_DIR).mkdir(parents=True)
    for model_file in (manifest.fleet.joblib, manifest.fleet.onnx):
        if model_file is not None:
            link_or_copy(source.path / model_file.path, out / model_file.path)
    devices = {}
    device_ids = [f"syn-{index:05d}" for index in range(n_devices)]
    for device_id in device_ids:
        stem = f"{MODELS_DIR}/{model_file_stem(device_id)}"
        files = {}
        for kind, model_file in (("joblib", template.joblib), ("onnx", template.onnx)):
            path = f"{stem}.{kind}"
            link_or_copy(source.path / model_file.path, out / path)
            files[kind] = ModelFile(path=path, sha256=model_file.sha256, size_bytes=model_file.size_bytes)
        devices[device_id] = template.model_copy(update=files)
    version = f"{manifest.bundle_version}-syn{n_devices}"
    synthetic = manifest.model_copy(update={"devices": devices, "bundle_version": version})
    text = synthetic.to_json()
    BundleManifest.model_validate_json(text)  # model_copy skips validation; the module will not
    (out / MANIFEST_NAME).write_text(text)
    return out, version, device_ids


# -- edges --------------------------------------------------------------------------------------------


class IpBlocks:
    """Hand out loopback blocks for stand-ins: brokers bind port 8883 on them, so a run never reuses one."""

    def __init__(self) -> None:
        # Offset by pid so that two runs (or a test run, which uses 127.200-249.x) do not collide.
        self.second = 150 + os.getpid() % 40
        self.third = 0

    def next(self) -> str:
        self.third += 1
        return f"127.{self.second}.{self.third}"


@dataclass
class EdgeSession:
    """A running LocalEdge with its upstream callback and field publisher."""

    edge: LocalEdge
    upstream: Upstream
    field: FieldDevices

    def pid(self, module: str) -> int:
        process = self.edge.processes[module].process
        assert process is not None
        return process.pid

    def stats(self, module: str) -> dict[str, Any]:
        status, payload = self.edge.method(module, "stats", timeout_s=30.0)
        if status != 200:
            raise RuntimeError(f"{module} stats answered {status}: {payload}")
        return dict(payload)

    def reset(self) -> None:
        """Zero both modules' counters (before a measured run)."""
        for module in self.edge.modules:
            self.edge.method(module, "reset", timeout_s=30.0)


@contextmanager
def running_edge(
    workdir: Path, deployment: Deployment, bundle_dir: Path, bundle_version: str, ip_base: str, predictor: str
) -> Iterator[EdgeSession]:
    """Start a LocalEdge whose inference module runs `predictor`; always stop everything it started."""
    upstream = Upstream()
    edge = LocalEdge(
        workdir,
        deployment,
        bundle_dir=bundle_dir,
        ip_base=ip_base,
        desired_overrides={"inference": {"expectedBundleVersion": bundle_version}},
        module_env={"inference": {"PREDICTOR": predictor}},
        upstream=upstream,
    )
    try:
        edge.start()  # inside the try: a module that fails to start would leave the brokers running
        yield EdgeSession(edge, upstream, FieldDevices(workdir, "127.0.0.1", edge.field_port))
    finally:
        edge.stop()


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

    @property
    def rps(self) -> float:
        """Readings per second, from the first field publish to the last arrival."""
        return self.arrived / max(self.elapsed_s, 1e-9)

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
    published = session.field.publish(devices, readings, before_go=meter.start)
    done = arrivals.wait(target, timeout_for(readings))
    cpu = meter.stop({"field publisher": published.cpu_s})
    return Throughput(
        readings=readings,
        arrived=readings - max(0, target - arrivals.count),
        elapsed_s=(arrivals.last_arrival_s if done else time.time()) - published.first_publish_s,
        publish_s=published.acked_s - published.first_publish_s,
        cpu_s=cpu,
        stats=session.stats("inference"),
        sensor_stats=session.stats("sensor"),
    )


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
        for item in json.loads(body)["readings"]:
            sensor_s = datetime.fromisoformat(item["edge"]["received_ts"]).timestamp()
            predicted_s = sensor_s + item["edge"]["latency_ms"] / 1000
            stamps[(item["device_id"], item["seq"])] = (sensor_s, predicted_s, arrived_s)
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
    """Stop the inference module, then queue one reading for it on the stand-in's broker.

    The module's persistent MQTT session keeps its subscription, so the broker holds the
    reading until the module reconnects, as edgeHub does while a module restarts.
    """
    edge = session.edge
    edge.processes["inference"].stop()
    router = edge.standin.router
    delivered = router.stats().get("to_module", 0)
    session.field.publish([device_id], 1)
    deadline = time.monotonic() + 10  # the sensor sends it when its batch window closes
    while router.stats().get("to_module", 0) <= delivered or any(router.unacknowledged().values()):
        if time.monotonic() > deadline:
            raise RuntimeError("the waiting reading never reached the inference module's broker")
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


# -- figures ------------------------------------------------------------------------------------------


def outbox_figure(stats: dict[str, Any], kind: str, output: str) -> int | None:
    """Return one outbox counter of a module's stats: kind 'sent', 'bytes' or 'units_4kb'."""
    value = stats.get("outbox", {}).get(kind, {}).get(output)
    return int(value) if value is not None else None


def per_item(value: float | None, count: float | None, scale: float = 1.0) -> float | None:
    """Return value/count × scale, None when either is missing or count is 0."""
    if value is None or not count:
        return None
    return value * scale / count


def upstream_units(inference: dict[str, Any], sensor: dict[str, Any]) -> float | None:
    """Return all upstream units (telemetry + predictions) per 1,000 readings the sensor took."""
    telemetry = outbox_figure(sensor, "units_4kb", "telemetry") or 0
    predictions = outbox_figure(inference, "units_4kb", "predictions") or 0
    return per_item(telemetry + predictions, sensor.get("readings"), 1000)


def build_metrics(
    args: argparse.Namespace,
    bundle: BenchBundle,
    batch_window_ms: int,
    max_batch_bytes: int,
    relay: RelayRuns | None,
    ceiling: Repeated | None,
    ours: Repeated | None,
    latency: Latency | None,
    naive: Repeated | None,
    synthetic: Synthetic | None,
) -> dict[str, Any]:
    """Gather every figure of the run into one flat-ish dict (None where a phase failed)."""
    runs = {"bare relay": relay.single if relay else None, "relay batched": relay.batched if relay else None}
    runs.update({"ceiling": ceiling, "ours": ours, "naive": naive})
    measured = {name: run for name, run in runs.items() if run is not None and run.runs}
    rps = {name: run.rps for name, run in measured.items()}
    cpu = {name: run.cpu_ms_per_1000() for name, run in measured.items()}
    ours_stats = ours.last.stats if ours else {}
    predictions = ours_stats.get("predictions")
    lat_stats = latency.stats if latency else {}
    lat_sensor = latency.sensor_stats if latency else {}
    other: Counter[str] = Counter()
    for run in measured.values():
        other.update(run.upstream_other)
    return {
        "mode": "quick" if args.quick else "full",
        "cpu_count": os.cpu_count(),
        "readings": args.readings,
        "repeats": args.repeats,
        "naive_readings": args.naive_readings,
        "bundle_devices": bundle.n_devices,
        "served_devices": len(bundle.serving),
        "device_model_family": bundle.family,
        "device_model_share": per_item(ours_stats.get("device_model"), predictions),
        "bare_relay_rps": rps.get("bare relay"),
        "bare_relay_batched_rps": rps.get("relay batched"),
        "ceiling_rps": rps.get("ceiling"),
        "ceiling_vs_bare_relay": per_item(rps.get("ceiling"), rps.get("bare relay")),
        "ours_rps": rps.get("ours"),
        "ours_vs_ceiling": per_item(rps.get("ours"), rps.get("ceiling")),
        "naive_rps": rps.get("naive"),
        "ours_vs_naive": per_item(rps.get("ours"), rps.get("naive")),
        # The model-serving cost alone, free of the transport: inference CPU per reading, naive over ours.
        "inference_cpu_naive_vs_ours": per_item(
            cpu.get("naive", {}).get("inference"), cpu.get("ours", {}).get("inference")
        ),
        "rps_all_runs": {name: run.rps_all for name, run in measured.items()},
        "complete": {name: run.complete for name, run in measured.items()},
        "field_publisher_rps": {name: run.publisher_rps() for name, run in measured.items()},
        "latency_rate_rps": LATENCY_RATE_PER_S,
        "latency_achieved_rate_rps": latency.achieved_rate_per_s if latency else None,
        "latency_p50_ms": latency.p50_ms if latency else None,
        "latency_p99_ms": latency.p99_ms if latency else None,
        "latency_max_ms": latency.max_ms if latency else None,
        "latency_matched": f"{latency.matched}/{latency.readings}" if latency else None,
        "latency_legs_ms": latency.legs_ms if latency else None,
        "batch_window_ms": batch_window_ms,
        "max_batch_bytes": max_batch_bytes,
        "inference_reported_latency_ms": lat_stats.get("latency"),
        "bundle10k_devices": synthetic.devices_in_bundle if synthetic else None,
        "bundle10k_model_mb": synthetic.model_mb if synthetic else None,
        "bundle10k_first_prediction_s": synthetic.first_prediction_s if synthetic else None,
        "bundle10k_startup_marks_s": synthetic.startup_marks_s if synthetic else None,
        "bundle10k_verify_s": synthetic.verify_s if synthetic else None,
        "bundle10k_rss_mb": synthetic.rss_mb if synthetic else None,
        "bundle10k_hwm_mb": synthetic.hwm_mb if synthetic else None,
        "bundle10k_served_devices": f"{synthetic.served_arrived}/{synthetic.served_devices}" if synthetic else None,
        "bundle10k_cold_devices_per_s": per_item(synthetic.served_arrived, synthetic.serve_s) if synthetic else None,
        "bundle10k_model_loads": synthetic.stats.get("model_loads") if synthetic else None,
        "bundle10k_cached_model_mb": per_item(synthetic.stats.get("cached_model_bytes"), 2**20) if synthetic else None,
        # The headline is at a steady 1,000 readings/s (the latency run), an edge's normal load;
        # a saturating burst packs predictions into fuller messages and is reported beside it.
        "units_4kb_per_1000_predictions": per_item(
            outbox_figure(lat_stats, "units_4kb", "predictions"), lat_stats.get("predictions"), 1000
        ),
        "units_4kb_per_1000_predictions_at_max_rate": per_item(
            outbox_figure(ours_stats, "units_4kb", "predictions"), predictions, 1000
        ),
        "upstream_units_4kb_per_1000_readings": upstream_units(lat_stats, lat_sensor),
        "upstream_units_4kb_per_1000_readings_at_max_rate": upstream_units(
            ours_stats, ours.last.sensor_stats if ours else {}
        ),
        "prediction_bytes_mean": per_item(
            outbox_figure(lat_stats, "bytes", "predictions"), lat_stats.get("predictions")
        ),
        "prediction_messages_per_1000": per_item(
            outbox_figure(lat_stats, "sent", "predictions"), lat_stats.get("predictions"), 1000
        ),
        "telemetry_bytes_per_reading": per_item(
            outbox_figure(lat_sensor, "bytes", "telemetry"), lat_sensor.get("readings")
        ),
        "cpu_ms_per_1000_readings": cpu,
        "upstream_other_messages": dict(other),
    }


def meets_targets(metrics: dict[str, Any], targets: dict[str, float]) -> dict[str, bool | None]:
    """Compare each measured metric with its target; None when it was not measured."""
    meets: dict[str, bool | None] = {}
    for name, target in targets.items():
        value = metrics.get(name)
        if value is None or not math.isfinite(value) or not math.isfinite(target):
            meets[name] = None
        else:
            meets[name] = value <= target if name in AT_MOST else value >= target
    return meets


def rounded(value: Any) -> Any:
    """Round floats for the JSON line (4 decimals) and turn NaN/inf into null."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def fmt(value: Any) -> str:
    """Format one figure for the human-readable report."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def target_note(name: str, meets: dict[str, bool | None], targets: dict[str, float]) -> str:
    """Return '   (target >= x: ok)' for metrics with a target, else ''."""
    if name not in targets:
        return ""
    sign = "<=" if name in AT_MOST else ">="
    verdict = {True: "ok", False: "MISSED", None: "not measured"}[meets[name]]
    return f"   (target {sign} {targets[name]:g}: {verdict})"


REPORT_SECTIONS: dict[str, tuple[str, ...]] = {
    "transport (readings/s, first field publish to last arrival; median of repeats)": (
        "bare_relay_rps",
        "bare_relay_batched_rps",
        "ceiling_rps",
        "ceiling_vs_bare_relay",
    ),
    "inference (readings/s, first field publish to last prediction upstream)": (
        "ours_rps",
        "ours_vs_ceiling",
        "naive_rps",
        "ours_vs_naive",
        "inference_cpu_naive_vs_ours",
        "device_model_family",
        "device_model_share",
    ),
    "latency, field publish to arrival upstream, at a fixed rate": (
        "latency_rate_rps",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_max_ms",
        "batch_window_ms",
        "latency_matched",
    ),
    f"{SYNTHETIC_DEVICES:,}-device bundle": (
        "bundle10k_first_prediction_s",
        "bundle10k_verify_s",
        "bundle10k_rss_mb",
        "bundle10k_hwm_mb",
        "bundle10k_served_devices",
        "bundle10k_cold_devices_per_s",
        "bundle10k_cached_model_mb",
    ),
    "upstream cost (IoT Hub 4 KB units; at 1,000 readings/s unless said)": (
        "units_4kb_per_1000_predictions",
        "units_4kb_per_1000_predictions_at_max_rate",
        "upstream_units_4kb_per_1000_readings",
        "upstream_units_4kb_per_1000_readings_at_max_rate",
        "prediction_bytes_mean",
        "prediction_messages_per_1000",
        "telemetry_bytes_per_reading",
    ),
}


def print_report(
    metrics: dict[str, Any], meets: dict[str, bool | None], targets: dict[str, float], errors: dict[str, str]
) -> None:
    """Print the figures as an aligned table, then the details that explain them."""
    say("")
    say(f"== edge throughput ({metrics['mode']} mode, {metrics['cpu_count']} cores) ==")
    for title, names in REPORT_SECTIONS.items():
        say(f"-- {title}")
        for name in names:
            say(f"  {name:<50} {fmt(metrics.get(name))}{target_note(name, meets, targets)}")
    say("-- details")
    for name, values in (metrics["latency_legs_ms"] or {}).items():
        say(f"  {'latency leg ' + name + ' (ms)':<50} p50 {fmt(values.get('p50'))}, p99 {fmt(values.get('p99'))}")
    marks = metrics["bundle10k_startup_marks_s"] or {}
    say(
        f"  {'bundle10k startup (s after spawn, module log)':<50} "
        + ", ".join(f"{k} {fmt(v)}" for k, v in marks.items())
    )
    for name, values in metrics["rps_all_runs"].items():
        say(f"  {'every run: ' + name:<50} {', '.join(f'{value:,.0f}' for value in values)} readings/s")
    runs = metrics["cpu_ms_per_1000_readings"]
    cores = metrics["cpu_count"] or 1
    say(f"-- CPU ms per 1,000 readings, by process ({cores} cores = {cores * 1000:,} ms of CPU per second)")
    processes = sorted({name for per_run in runs.values() for name in per_run})
    say(f"  {'process':<24}" + "".join(f"{run:>15}" for run in runs))
    for process in processes:
        say(f"  {process:<24}" + "".join(f"{fmt(runs[run].get(process)):>15}" for run in runs))
    if metrics["upstream_other_messages"]:
        say(f"-- unexpected upstream messages: {metrics['upstream_other_messages']}")
    for phase, error in errors.items():
        say(f"-- FAILED {phase}: {error}")


# -- the run ------------------------------------------------------------------------------------------


class Phases:
    """Run the measurement phases one by one: time each, and keep going when one fails."""

    def __init__(self) -> None:
        self.timings_s: dict[str, float] = {}
        self.errors: dict[str, str] = {}

    def run(self, name: str, title: str, measure: Callable[[], T]) -> T | None:
        """Return what `measure` returns, or None (error recorded) when it raises."""
        say(title)
        started = time.perf_counter()
        try:
            return measure()
        except Exception as err:  # one broken phase must not cost the figures of the others
            self.errors[name] = f"{type(err).__name__}: {err}"
            say(f"    FAILED: {self.errors[name]}")
            return None
        finally:
            self.timings_s[f"{name}_s"] = time.perf_counter() - started


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line and fill in the mode's defaults."""
    full, quick = FULL_DEFAULTS, QUICK_DEFAULTS
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="smaller runs: finishes in under 3 minutes on 2 cores")
    parser.add_argument(
        "--readings", type=int, help=f"readings per throughput run ({full['readings']}/{quick['readings']})"
    )
    parser.add_argument(
        "--repeats", type=int, help=f"runs per configuration, median kept ({full['repeats']}/{quick['repeats']})"
    )
    parser.add_argument(
        "--naive-readings",
        type=int,
        help=f"readings of the naive run ({full['naive_readings']}/{quick['naive_readings']})",
    )
    parser.add_argument(
        "--latency-s", type=float, help=f"length of the latency run ({full['latency_s']:g}/{quick['latency_s']:g} s)"
    )
    parser.add_argument(
        "--rss-devices",
        type=int,
        help=f"devices served before RSS is read ({full['rss_devices']}/{quick['rss_devices']})",
    )
    parser.add_argument(
        "--bundle-devices",
        type=int,
        help=f"devices in the trained bundle ({full['bundle_devices']}/{quick['bundle_devices']})",
    )
    parser.add_argument("--bundle-rows", type=int, help=f"training rows per device ({full['bundle_rows']})")
    parser.add_argument(
        "--workdir", type=Path, help="where bundles, broker state and module logs go (default: a tempdir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    args = parser.parse_args(argv)
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    counts = (args.readings, args.repeats, args.naive_readings, args.rss_devices, args.bundle_devices, args.bundle_rows)
    if min(counts) < 1 or args.latency_s <= 0:
        parser.error("counts and --latency-s must be positive")
    # One synthetic device's reading is the one waiting at the restart; the others are served after.
    args.rss_devices = min(args.rss_devices, SYNTHETIC_DEVICES - 1)
    return args


def run_benchmark(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Run every measurement; return the JSON payload and the errors of the phases that failed."""
    load_avg_1m = os.getloadavg()[0]
    deployment = load_deployment(TEMPLATE)
    sensor_desired = deployment.desired("sensor")
    batch_window_ms = int(sensor_desired.get("batchWindowMs", 200))
    max_batch_bytes = int(sensor_desired.get("maxBatchBytes", 3900))
    threshold = float(deployment.desired("inference").get("poorModelThreshold", 1.0))
    ips = IpBlocks()
    phases = Phases()

    # Every other phase needs the bundle: a failure here is the run's failure.
    say(f"building a bundle: {args.bundle_devices} devices x {args.bundle_rows} rows, {DEVICE_FAMILY} only ...")
    bundle = build_bundle(workdir, args.bundle_devices, args.bundle_rows, threshold)
    phases.timings_s["bundle_build_s"] = bundle.build_s
    if not bundle.serving:
        raise RuntimeError("no device of the bundle is served by its own model; nothing to benchmark")
    say(f"    {bundle.n_devices} devices, {len(bundle.serving)} served by their own model ({bundle.family})")
    jobs = f"{args.repeats} x {args.readings:,} readings"
    devices = bundle.serving

    relay = phases.run(
        "bare_relay",
        f"1/5 bare relay on one plain Mosquitto, single and batched: {jobs} each ...",
        lambda: measure_bare_relay(workdir, devices, args.readings, args.repeats, (max_batch_bytes, batch_window_ms)),
    )
    if relay is not None:
        say(f"    single {relay.single.rps:,.0f} readings/s, batched {relay.batched.rps:,.0f} readings/s")
    ceiling = phases.run(
        "ceiling",
        f"2/5 ceiling: module path with PREDICTOR=passthrough, {jobs} ...",
        lambda: measure_module_path(
            workdir / "edge-ceiling", deployment, bundle, ips.next(), "passthrough", args.readings, args.repeats
        )[0],
    )
    ours_and_latency = phases.run(
        "ours",
        f"3/5 ours: PREDICTOR=bundle, {jobs}; then {args.latency_s:g} s at {LATENCY_RATE_PER_S:,.0f} readings/s ...",
        lambda: measure_module_path(
            workdir / "edge-ours",
            deployment,
            bundle,
            ips.next(),
            "bundle",
            args.readings,
            args.repeats,
            latency=(LATENCY_RATE_PER_S, args.latency_s),
        ),
    )
    ours, latency = ours_and_latency or (None, None)
    naive = phases.run(
        "naive",
        f"4/5 naive: PREDICTOR=naive-sklearn, {args.naive_readings:,} readings ...",
        lambda: measure_module_path(
            workdir / "edge-naive", deployment, bundle, ips.next(), "naive-sklearn", args.naive_readings, 1
        )[0],
    )
    synthetic = phases.run(
        "bundle10k",
        f"5/5 {SYNTHETIC_DEVICES:,}-device bundle: first prediction after spawn, RSS after {args.rss_devices:,} served",
        lambda: measure_synthetic(workdir, deployment, bundle, ips.next(), args.rss_devices),
    )

    metrics = build_metrics(
        args, bundle, batch_window_ms, max_batch_bytes, relay, ceiling, ours, latency, naive, synthetic
    )
    metrics["load_avg_1m_at_start"] = load_avg_1m
    metrics["timings_s"] = phases.timings_s
    metrics["errors"] = phases.errors
    targets = {**TARGETS, "latency_p99_ms": LATENCY_BUDGET_MS + batch_window_ms}
    meets = meets_targets(metrics, targets)
    print_report(metrics, meets, targets, phases.errors)
    return rounded({**metrics, "targets": targets, "meets": meets}), phases.errors


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark in a work directory; print the report, then the JSON line. Exit 1 if a phase failed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    # SIGTERM would end us without unwinding: make it SystemExit so that every `finally` stops its processes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    owned = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-edge-bench-")) if owned else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    errors: dict[str, str] = {"run": "did not finish"}
    try:
        payload, errors = run_benchmark(args, workdir)
    finally:
        stop_children()
        if owned and not args.keep and not errors:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"work directory kept (module and broker logs): {workdir}")
    payload["timings_s"]["total_s"] = round(time.perf_counter() - started, 1)
    say(f"total {payload['timings_s']['total_s']:.0f} s")
    print(json.dumps(payload), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
