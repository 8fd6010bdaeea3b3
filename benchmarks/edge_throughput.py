"""Benchmark the edge path: field MQTT → sensor → edgeHub stand-in → inference → upstream.

One run builds a small real bundle (device models restricted to RandomForest, so the naive
baseline pays a realistic per-call cost) and measures, each figure beside its baseline:

1. ceiling: the module path with the inference module in pass-through mode (`PREDICTOR=passthrough`);
2. bare relay: a paho subscribe→republish relay on one plain Mosquitto (no TLS, no modules),
   one reading per MQTT message, and batched like the sensor (`maxBatchBytes`, `batchWindowMs`);
3. ours: the module path with `PREDICTOR=bundle` (ONNX, many readings per model call), as a
   ratio to the ceiling;
4. naive: the module path with `PREDICTOR=naive-sklearn` (joblib, one `predict` per reading),
   on fewer readings (it is a rate), and ours/naive;
5. latency p50/p99 from field publish to arrival upstream at a fixed rate, beside the sensor's
   batch window;
6. a synthetic 10,000-device bundle (one trained device's files under 10,000 ids, hard links,
   a proper manifest): time from spawning the inference process to the first prediction
   upstream (a reading is already waiting for it), and the module's RSS after it has served
   readings from many distinct devices;
7. IoT Hub 4 KB units per 1,000 predictions (inference `stats`) and all upstream units per
   1,000 readings (plus the sensor's telemetry).

Throughput is readings/s from the first field publish to the last prediction's arrival at the
upstream callback; each run is preceded by a warm-up that loads every device's model, after
which the modules' counters are reset. The field publisher and the bare relay are child
processes (`_edge_bench_util.py`); the stand-in's router and the upstream callback run in this
process. CPU seconds of every process are sampled around each run to show where time goes.

It prints a human-readable report, then one JSON object on the last line of stdout. It never
asserts: the `meets` booleans say which targets were reached.

Usage:
    python benchmarks/edge_throughput.py --quick          # < 3 minutes on 2 cores
    python benchmarks/edge_throughput.py                  # ~10 minutes: more readings, 10,000 devices served
    python benchmarks/edge_throughput.py --quick --readings 5000 --workdir /tmp/edge-bench --keep
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
from typing import Any

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
from edgefleet.edgehub.broker import Broker, Listener
from edgefleet.local_edge import LocalEdge, free_port
from edgefleet.physics import FEATURES
from edgefleet.routes import Message

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "deployment" / "deployment.template.json"
CHILD = Path(__file__).resolve().with_name("_edge_bench_util.py")
DESCRIPTION = "Benchmark the edge path: pass-through ceiling, bare relay, ours, naive sklearn, latency, 10k bundle."
FULL_DEFAULTS: dict[str, Any] = {
    "readings": 40_000,
    "repeats": 3,
    "naive_readings": 6_000,
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
DEVICE_FAMILY = "random_forest"  # the naive baseline's per-call cost is a forest's, as in production
WARMUP_ROUNDS = 2  # readings per device before a measured run: every device model is loaded by then
LATENCY_BUDGET_MS = 20.0  # p99 target on top of the sensor's batch window
TARGETS: dict[str, float] = {
    "ours_vs_ceiling": 0.70,
    "ours_vs_naive": 20.0,
    "latency_p99_ms": math.nan,  # 20 ms + the batch window, filled in once the window is known
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
CLK_TCK = os.sysconf("SC_CLK_TCK")

_children: list[subprocess.Popen[str]] = []  # every child we start, killed at exit if still running


def say(message: str) -> None:
    """Print one progress line of the report right away."""
    print(message, flush=True)


# -- processes and CPU time -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of a process (all its threads), 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> tuple[float, float]:
    """Return (VmRSS, VmHWM) of a process in MB (MiB)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return values["VmRSS"], values["VmHWM"]


def mosquitto_children() -> list[int]:
    """Return the pids of the Mosquitto processes this benchmark started (children named mosquitto)."""
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
    """CPU seconds per component between `start()` and `stop()` (10 ms resolution)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {**pids, "bench (router, sink)": os.getpid()}
        self.brokers = mosquitto_children()
        self._before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        sample["mosquitto (all)"] = sum(cpu_seconds(pid) for pid in self.brokers)
        return sample

    def start(self) -> None:
        self._before = self._sample()

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        after = self._sample()
        self.used = {name: after[name] - self._before[name] for name in after}
        self.used.update(extra or {})
        return self.used


def spawn_child(args: list[str]) -> subprocess.Popen[str]:
    """Start a `_edge_bench_util.py` child and wait for its `ready` line."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _children.append(child)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "ready":
        child.kill()
        _, err = child.communicate(timeout=5)
        raise RuntimeError(f"benchmark child {args[0]} did not start: {line or ''}{err}")
    return child


def stop_children() -> None:
    """Kill any child still running (an error or Ctrl-C left it behind)."""
    for child in _children:
        if child.poll() is None:
            child.kill()
            child.wait(5)


# -- the field publisher ------------------------------------------------------------------------------


@dataclass
class Published:
    """What a publisher child reported about one job."""

    readings: int
    devices: list[str]
    seq_start: int
    first_publish_s: float
    last_publish_s: float
    acked_s: float
    cpu_s: float
    sent_s: list[float] | None = None

    def sent_times(self) -> Iterator[tuple[tuple[str, int], float]]:
        """Yield ((device_id, seq), publish time) of every reading (the child's round-robin order)."""
        assert self.sent_s is not None
        n_devices = len(self.devices)
        for index, sent in enumerate(self.sent_s):
            yield (self.devices[index % n_devices], self.seq_start + index // n_devices), sent


class FieldDevices:
    """Publish jobs of readings to one field broker, keeping every (device, seq) unique.

    The sensor drops a seq it has seen recently as a QoS 1 redelivery, so jobs on one edge
    continue each device's seq where the previous job stopped.
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
        """Run one publisher child: all `readings` round-robin over `devices`; return when the broker acked all."""
        self._jobs += 1
        seq_start = self.next_seq
        self.next_seq += math.ceil(readings / len(devices)) + 1
        config_path = self.workdir / f"publish-{self._jobs}.json"
        times_path = self.workdir / f"publish-{self._jobs}-times.json"
        config = {
            "host": self.host,
            "port": self.port,
            "client_id": f"edge-bench-{os.getpid()}-{self._jobs}",
            "devices": devices,
            "readings": readings,
            "seq_start": seq_start,
            "rate_per_s": rate_per_s,
            "topic": self.topic,
            "times_path": str(times_path) if keep_times else None,
        }
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
            raise RuntimeError(f"publisher child failed: {child.stderr.read() if child.stderr else ''}")
        summary = json.loads(line)
        sent_s = json.loads(times_path.read_text()) if keep_times else None
        return Published(
            readings=readings,
            devices=devices,
            seq_start=seq_start,
            first_publish_s=summary["first_publish_s"],
            last_publish_s=summary["last_publish_s"],
            acked_s=summary["acked_s"],
            cpu_s=summary["cpu_s"],
            sent_s=sent_s,
        )


# -- the upstream end ---------------------------------------------------------------------------------


class Upstream:
    """The stand-in's `$upstream` callback: count predictions and (when asked) keep the bodies with arrival times.

    It runs on the router's upstream thread, in this process: it only counts with a C-level scan
    and appends; bodies are parsed after the run, so the sink does not slow the path it measures.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.predictions = 0
        self.telemetry_readings = 0
        self.other: Counter[str] = Counter()  # dead letters, alerts: a sign something went wrong
        self.last_arrival_s = 0.0
        self.first_arrival_s: float | None = None
        self._kept: list[tuple[float, bytes]] | None = None

    def __call__(self, message: Message) -> None:
        now = time.time()
        if message.connection_module_id == "inference" and message.output == "predictions":
            count = message.body.count(PREDICTION_MARK)
            with self._cond:
                self.predictions += count
                self.last_arrival_s = now
                if self.first_arrival_s is None:
                    self.first_arrival_s = now
                if self._kept is not None:
                    self._kept.append((now, message.body))
                self._cond.notify_all()
        elif message.connection_module_id == "sensor" and message.output == "telemetry":
            with self._cond:
                self.telemetry_readings += message.body.count(READING_MARK)
        else:
            with self._cond:
                self.other[f"{message.connection_module_id}/{message.output}"] += 1

    def keep(self) -> None:
        """Start keeping prediction bodies (for latency)."""
        with self._cond:
            self._kept = []

    def kept(self) -> list[tuple[float, bytes]]:
        """Stop keeping bodies and return those kept."""
        with self._cond:
            kept, self._kept = self._kept or [], None
            return kept

    def wait_predictions(self, total: int, timeout_s: float) -> bool:
        """Wait until `total` predictions have arrived since the start; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.predictions < total:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True


# -- bundles ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchBundle:
    """The bundle the module runs measure, and which of its devices its device models serve."""

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
    """Train a real bundle in this process (no Spark) with RandomForest device models only."""
    import pandas as pd

    from cloud_training.device_training import TrainingConfig
    from cloud_training.export import write_bundle
    from cloud_training.fleet import train_fleet_locally
    from edgefleet.history import HistorySpec, generate_history

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
    """Hard-link (instant, no disk) or, across file systems, copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def build_synthetic_bundle(source: BenchBundle, out: Path, n_devices: int) -> tuple[Path, str, list[str]]:
    """Replicate one served device's model files under `n_devices` ids, with every file pinned in the manifest.

    The copies have the same content, so each entry reuses the original sha256 and size; only
    the paths change. Returns (bundle dir, bundle version, device ids).
    """
    manifest = read_manifest(source.path)
    template_id = source.serving[0]
    template = manifest.devices[template_id]
    assert template.joblib is not None and template.onnx is not None
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
    # Round-trip through validation: the module reads this manifest with the same model.
    BundleManifest.model_validate_json(synthetic.to_json())
    (out / MANIFEST_NAME).write_text(synthetic.to_json())
    return out, version, device_ids


# -- edges --------------------------------------------------------------------------------------------


class IpBlocks:
    """Hand out loopback blocks for stand-ins: brokers bind port 8883 on them, so never reuse one in a run."""

    def __init__(self) -> None:
        # Offset by pid so two benchmarks (or a test run, which uses 127.200-249) do not collide.
        self.second = 150 + os.getpid() % 40
        self.third = 0

    def next(self) -> str:
        self.third += 1
        return f"127.{self.second}.{self.third}"


@dataclass
class EdgeSession:
    """A running LocalEdge with its upstream collector and field publisher."""

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
        for module in self.edge.modules:
            self.edge.method(module, "reset", timeout_s=30.0)


@contextmanager
def running_edge(
    workdir: Path,
    deployment: Deployment,
    bundle_dir: Path,
    bundle_version: str,
    ip_base: str,
    predictor: str,
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
        edge.start()  # inside try: a module that fails to start leaves brokers behind otherwise
        yield EdgeSession(edge, upstream, FieldDevices(workdir, "127.0.0.1", edge.field_port))
    finally:
        edge.stop()


# -- measurements -------------------------------------------------------------------------------------


@dataclass
class Throughput:
    """One end-to-end throughput run."""

    label: str
    readings: int
    arrived: int
    elapsed_s: float
    publish_s: float  # how long the field publisher took (its own ceiling)
    cpu_s: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # inference stats after the run
    sensor_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """Readings per second, from the first field publish to the last arrival upstream."""
        return self.arrived / max(self.elapsed_s, 1e-9)

    @property
    def complete(self) -> bool:
        return self.arrived >= self.readings

    def cpu_ms_per_1000(self) -> dict[str, float]:
        """CPU milliseconds per 1,000 readings, per process."""
        return {name: used * 1e6 / max(self.arrived, 1) for name, used in self.cpu_s.items()}


@dataclass
class Repeated:
    """Repeated throughput runs of one configuration: the median is the figure, the spread is reported."""

    runs: list[Throughput]
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
        """CPU milliseconds per 1,000 readings over all runs (summed first: 10 ms ticks are coarse)."""
        arrived = max(sum(run.arrived for run in self.runs), 1)
        names = {name for run in self.runs for name in run.cpu_s}
        return {name: sum(run.cpu_s.get(name, 0.0) for run in self.runs) * 1e6 / arrived for name in names}


def timeout_for(readings: int, floor_rps: float = 50.0) -> float:
    """Return how long to wait for a job: generous, so a slow mode yields a figure instead of an error."""
    return 30.0 + readings / floor_rps


def warm_up(session: EdgeSession, devices: list[str]) -> None:
    """Publish a few readings per device and wait for them: models loaded, connections hot; then zero the counters."""
    readings = WARMUP_ROUNDS * len(devices)
    target = session.upstream.predictions + readings
    session.field.publish(devices, readings)
    if not session.upstream.wait_predictions(target, timeout_for(readings, 20.0)):
        raise RuntimeError(f"warm-up: only {session.upstream.predictions} of {target} predictions arrived")
    session.reset()


def run_throughput(session: EdgeSession, label: str, devices: list[str], readings: int) -> Throughput:
    """Publish `readings` as fast as possible and time them to the last prediction upstream."""
    upstream = session.upstream
    target = upstream.predictions + readings
    meter = CpuMeter({"sensor": session.pid("sensor"), "inference": session.pid("inference")})
    published = session.field.publish(devices, readings, before_go=meter.start)
    done = upstream.wait_predictions(target, timeout_for(readings))
    cpu = meter.stop({"field publisher": published.cpu_s})
    arrived = readings - max(0, target - upstream.predictions)
    elapsed = (upstream.last_arrival_s if done else time.time()) - published.first_publish_s
    return Throughput(
        label=label,
        readings=readings,
        arrived=arrived,
        elapsed_s=elapsed,
        publish_s=published.acked_s - published.first_publish_s,
        cpu_s=cpu,
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
    repeats: int = 1,
    latency: tuple[float, float] | None = None,
) -> tuple[Repeated, Latency | None]:
    """Start an edge with `predictor`, warm it up, run the throughput jobs (and the latency job)."""
    say(f"    starting the edge (PREDICTOR={predictor}) ...")
    with running_edge(workdir, deployment, bundle.path, bundle.version, ip_base, predictor) as session:
        warm_up(session, bundle.serving)
        result = Repeated([])
        for _ in range(repeats):
            run = run_throughput(session, predictor, bundle.serving, readings)
            result.runs.append(run)
            say(f"    {run.rps:,.0f} readings/s{'' if run.complete else f' (only {run.arrived:,} arrived)'}")
            session.reset()
            if not run.complete:
                break  # a backlog would leak into the next run
        lat = None
        if latency is not None and result.complete:
            lat = run_latency(session, bundle.serving, *latency)
        result.upstream_other = dict(session.upstream.other)
        say("    stopping the edge ...")
    return result, lat


@dataclass
class Latency:
    """Field publish → upstream arrival at a fixed rate."""

    rate_per_s: float
    duration_s: float
    readings: int
    matched: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    achieved_rate_per_s: float
    stats: dict[str, Any]
    sensor_stats: dict[str, Any]
    segments_ms: dict[str, dict[str, float]]  # p50/p99 of each leg of the path


def percentiles(values: list[float]) -> dict[str, float]:
    """Return p50 and p99 of `values` (empty dict when there are none)."""
    if not values:
        return {}
    p50, p99 = np.percentile(np.asarray(values, dtype=float), [50, 99])
    return {"p50": float(p50), "p99": float(p99)}


def run_latency(session: EdgeSession, devices: list[str], rate_per_s: float, duration_s: float) -> Latency:
    """Publish at a fixed rate with a unique (device, seq) per reading and match each to its arrival."""
    upstream = session.upstream
    readings = int(rate_per_s * duration_s)
    target = upstream.predictions + readings
    upstream.keep()
    published = session.field.publish(devices, readings, rate_per_s=rate_per_s, keep_times=True)
    upstream.wait_predictions(target, timeout_for(readings))
    kept = upstream.kept()
    # Each prediction carries the sensor's receive stamp and the inference's own latency (receipt to
    # prediction done): with our publish and arrival times, that splits the path in three legs.
    arrival: dict[tuple[str, int], tuple[float, float, float]] = {}
    for arrived_s, body in kept:
        for item in json.loads(body)["readings"]:
            edge_info = item["edge"]
            sensor_s = datetime.fromisoformat(edge_info["received_ts"]).timestamp()
            predicted_s = sensor_s + edge_info["latency_ms"] / 1000
            arrival[(item["device_id"], item["seq"])] = (sensor_s, predicted_s, arrived_s)
    totals: list[float] = []
    legs: dict[str, list[float]] = {"field_to_sensor": [], "sensor_to_prediction": [], "prediction_to_upstream": []}
    for key, sent in published.sent_times():
        if key not in arrival:
            continue
        sensor_s, predicted_s, arrived_s = arrival[key]
        totals.append((arrived_s - sent) * 1000)
        legs["field_to_sensor"].append((sensor_s - sent) * 1000)
        legs["sensor_to_prediction"].append((predicted_s - sensor_s) * 1000)
        legs["prediction_to_upstream"].append((arrived_s - predicted_s) * 1000)
    total = percentiles(totals)
    achieved = readings / max(published.last_publish_s - published.first_publish_s, 1e-9)
    return Latency(
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        readings=readings,
        matched=len(totals),
        p50_ms=total.get("p50"),
        p99_ms=total.get("p99"),
        max_ms=max(totals) if totals else None,
        achieved_rate_per_s=achieved,
        stats=session.stats("inference"),
        sensor_stats=session.stats("sensor"),
        segments_ms={name: percentiles(values) for name, values in legs.items()},
    )


@dataclass
class RelayRuns:
    """The bare relay runs: one reading per MQTT message, and batched like the sensor."""

    single: Repeated
    batched: Repeated


class RelaySink:
    """A paho subscriber at the end of the bare relay: counts readings and the last arrival."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.upstream = Upstream()  # reused for its counter and wait; fed below, not by a router
        self.client = mqtt.Client(client_id=f"edge-bench-sink-{os.getpid()}", clean_session=True)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda c, userdata, mid, granted: subscribed.set()
        self.client.on_connect = lambda c, userdata, flags, rc: c.subscribe(topic, qos=1)
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("the relay sink could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        count = msg.payload.count(READING_MARK)
        with self.upstream._cond:
            self.upstream.predictions += count
            self.upstream.last_arrival_s = now
            self.upstream._cond.notify_all()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_relay_job(
    workdir: Path, host: str, port: int, label: str, devices: list[str], readings: int, relay_args: list[str]
) -> Throughput:
    """Relay `readings` from bench/in to bench/out through a relay child and time them to the sink."""
    relay = spawn_child(["relay", host, str(port), "bench/in", f"bench/out/{label}", *relay_args])
    sink = RelaySink(host, port, f"bench/out/{label}")
    try:
        field_devices = FieldDevices(workdir, host, port, topic="bench/in")
        meter = CpuMeter({"relay": relay.pid})
        published = field_devices.publish(devices, readings, before_go=meter.start)
        done = sink.upstream.wait_predictions(readings, timeout_for(readings))
        cpu = meter.stop({"field publisher": published.cpu_s})
        arrived = min(readings, sink.upstream.predictions)
        elapsed = (sink.upstream.last_arrival_s if done else time.time()) - published.first_publish_s
    finally:
        sink.close()
        assert relay.stdin is not None
        relay.stdin.close()
        relay.wait(10)
    return Throughput(label, readings, arrived, elapsed, published.acked_s - published.first_publish_s, cpu)


def measure_bare_relay(
    workdir: Path, devices: list[str], readings: int, repeats: int, batch: tuple[int, int]
) -> RelayRuns:
    """Run the relay one reading per message, then batched like the sensor, on one plain Mosquitto."""
    host = "127.0.0.1"
    port = free_port(host)
    # Same generated config as the edge's brokers (queues, in-flight window, no Nagle), minus TLS.
    broker = Broker(workdir / "bare", "bare", [Listener(host, port)])
    single, batched = Repeated([]), Repeated([])
    try:
        broker.start()
        for index in range(repeats):
            single.runs.append(run_relay_job(workdir, host, port, f"single{index}", devices, readings, []))
            batch_args = [str(batch[0]), str(batch[1])]
            batched.runs.append(run_relay_job(workdir, host, port, f"batched{index}", devices, readings, batch_args))
    finally:
        broker.stop()
    return RelayRuns(single, batched)


@dataclass
class Synthetic:
    """The 10,000-device bundle: cold start to first prediction and memory after many devices."""

    devices_in_bundle: int
    build_s: float
    bundle_mb: float
    first_prediction_s: float | None
    served_devices: int
    served_arrived: int
    serve_s: float
    rss_mb: float
    hwm_mb: float
    stats: dict[str, Any]
    verify_s: float  # edgefleet.bundle.verify_bundle on this bundle, in this process (files in page cache)
    startup_marks_s: dict[str, float | None]  # from the module's log, seconds after spawn


# Lines the inference module logs on its way up (edgefleet.module_runtime's format: asctime first).
STARTUP_MARKS = {"bundle_opened": "Bundle ", "ready": "Inference module ready"}


def startup_marks(log_path: Path, spawned_s: float) -> dict[str, float | None]:
    """Return when the module logged each startup mark, in seconds after `spawned_s` (None if not found).

    Best effort: the log is the module's own, and its wording or format may change.
    """
    marks: dict[str, float | None] = dict.fromkeys(STARTUP_MARKS)
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return marks
    for line in lines:
        try:
            logged_s = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, like asctime
        except ValueError:
            continue
        if logged_s < spawned_s - 0.01:
            continue  # an earlier start of the module in the same log
        for name, text in STARTUP_MARKS.items():
            if marks[name] is None and text in line:
                marks[name] = logged_s - spawned_s
    return marks


def measure_synthetic(
    workdir: Path, deployment: Deployment, bundle: BenchBundle, ip_base: str, n_served: int
) -> Synthetic:
    """Build the 10k bundle; time spawn → first prediction with a reading waiting; RSS after `n_served` devices."""
    started = time.perf_counter()
    path, version, device_ids = build_synthetic_bundle(bundle, workdir / "bundle10k", SYNTHETIC_DEVICES)
    build_s = time.perf_counter() - started
    manifest = read_manifest(path)
    bundle_mb = sum(f.size_bytes for f in manifest.files()) / 2**20
    say(f"    built in {build_s:.1f} s ({bundle_mb:,.0f} MB of model files, hard links); starting the edge ...")
    with running_edge(workdir / "edge10k", deployment, path, version, ip_base, "bundle") as session:
        edge, upstream = session.edge, session.upstream
        # Stop the inference module, then queue a reading for it: its persistent session on the
        # stand-in's broker keeps it, as edgeHub does while a module restarts.
        edge.processes["inference"].stop()
        router = edge.standin.router
        to_module = router.stats().get("to_module", 0)
        session.field.publish(device_ids[:1], 1)
        deadline = time.monotonic() + 10
        while router.stats().get("to_module", 0) <= to_module or any(router.unacknowledged().values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the waiting reading never reached the inference module's broker")
            time.sleep(0.02)
        target = upstream.predictions + 1
        spawned_s = time.time()
        edge.start_module("inference", wait=False)
        first = upstream.wait_predictions(target, 60.0)
        first_prediction_s = upstream.last_arrival_s - spawned_s if first else None
        say(
            f"    first prediction {first_prediction_s or math.nan:.2f} s after spawn; serving {n_served:,} devices ..."
        )
        served = device_ids[1 : n_served + 1]
        target = upstream.predictions + len(served)
        published = session.field.publish(served, len(served))
        upstream.wait_predictions(target, timeout_for(len(served), 20.0))
        arrived = len(served) - max(0, target - upstream.predictions)
        serve_s = upstream.last_arrival_s - published.first_publish_s
        rss, hwm = rss_mb(session.pid("inference"))
        stats = session.stats("inference")
        # Read now, not at the first prediction: the module logs "ready" only after it answered the waiting reading.
        marks = startup_marks(edge.processes["inference"].log_path, spawned_s)
        say("    stopping the edge ...")
    started = time.perf_counter()
    problems = verify_bundle(path)
    verify_s = time.perf_counter() - started
    if problems:
        raise RuntimeError(f"the synthetic bundle does not verify: {problems[:3]}")
    return Synthetic(
        devices_in_bundle=len(device_ids),
        build_s=build_s,
        bundle_mb=bundle_mb,
        first_prediction_s=first_prediction_s,
        served_devices=len(served),
        served_arrived=arrived,
        serve_s=serve_s,
        rss_mb=rss,
        hwm_mb=hwm,
        stats=stats,
        verify_s=verify_s,
        startup_marks_s=marks,
    )


# -- the report ---------------------------------------------------------------------------------------


def units_per_1000(stats: dict[str, Any], output: str, count: int) -> float | None:
    """Return 4 KB units sent on `output` per 1,000 of `count`."""
    units = stats.get("outbox", {}).get("units_4kb", {}).get(output)
    return units * 1000 / count if units is not None and count else None


def upstream_units(inference: dict[str, Any], sensor: dict[str, Any]) -> float | None:
    """Return all upstream units (telemetry + predictions) per 1,000 readings the sensor took."""
    readings = sensor.get("readings", 0)
    units = sensor.get("outbox", {}).get("units_4kb", {}).get("telemetry", 0)
    units += inference.get("outbox", {}).get("units_4kb", {}).get("predictions", 0)
    return units * 1000 / readings if readings else None


def mean_bytes(stats: dict[str, Any], output: str, count: int) -> float | None:
    """Return bytes sent on `output` per item (per prediction, per reading)."""
    sent = stats.get("outbox", {}).get("bytes", {}).get(output)
    return sent / count if sent is not None and count else None


def per_1000(stats: dict[str, Any], output: str, count: int) -> float | None:
    """Return messages sent on `output` per 1,000 items."""
    sent = stats.get("outbox", {}).get("sent", {}).get(output)
    return sent * 1000 / count if sent is not None and count else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return numerator/denominator, None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


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
    """Round floats for the JSON line (4 significant decimals) and turn NaN/inf into null."""
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


def print_report(metrics: dict[str, Any], meets: dict[str, bool | None], targets: dict[str, float]) -> None:
    """Print the figures as an aligned table, then CPU per 1,000 readings for each run."""
    say("")
    say(f"== edge throughput ({metrics['mode']} mode, {metrics['cpu_count']} cores) ==")
    sections = {
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
        f"latency, field publish to upstream, at {metrics['latency_rate_rps']:,.0f} readings/s": (
            "latency_p50_ms",
            "latency_p99_ms",
            "latency_max_ms",
            "batch_window_ms",
            "latency_matched",
            "latency_achieved_rate_rps",
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
    for title, names in sections.items():
        say(f"-- {title}")
        for name in names:
            say(f"  {name:<48} {fmt(metrics.get(name))}{target_note(name, meets, targets)}")
    for name, values in (metrics["latency_legs_ms"] or {}).items():
        say(f"  {'latency leg ' + name:<48} p50 {fmt(values.get('p50'))}, p99 {fmt(values.get('p99'))}")
    marks = ", ".join(f"{name} {fmt(value)}" for name, value in metrics["bundle10k_startup_marks_s"].items())
    say(f"  {'bundle10k startup (s after spawn, module log)':<48} {marks}")
    say("-- every run (readings/s)")
    for name, values in metrics["rps_all_runs"].items():
        say(f"  {name:<48} {', '.join(f'{value:,.0f}' for value in values)}")
    say("-- CPU ms per 1,000 readings, by process (2 cores = 2,000 ms of CPU per second)")
    runs = metrics["cpu_ms_per_1000_readings"]
    names = sorted({name for per_run in runs.values() for name in per_run})
    say(f"  {'process':<24}" + "".join(f"{run:>16}" for run in runs))
    for name in names:
        say(f"  {name:<24}" + "".join(f"{fmt(runs[run].get(name)):>16}" for run in runs))
    say("-- timings (s)")
    for name, value in metrics["timings_s"].items():
        say(f"  {name:<48} {fmt(value)}")
    if metrics["upstream_other_messages"]:
        say(f"-- unexpected upstream messages: {metrics['upstream_other_messages']}")


# -- the run ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line and fill in the mode's defaults."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="smaller runs: finishes in under 3 minutes on 2 cores")
    parser.add_argument("--readings", type=int, help="readings per throughput run (full 40000, quick 12000)")
    parser.add_argument("--repeats", type=int, help="throughput runs per configuration, median kept (full 3, quick 2)")
    parser.add_argument("--naive-readings", type=int, help="readings for the naive run (full 6000, quick 2000)")
    parser.add_argument("--latency-s", type=float, help="duration of the latency run (full 10, quick 5)")
    parser.add_argument("--rss-devices", type=int, help="distinct devices served before RSS (full 10000, quick 2000)")
    parser.add_argument("--bundle-devices", type=int, help="devices in the trained bundle (full 50, quick 30)")
    parser.add_argument("--bundle-rows", type=int, help="training rows per device (300)")
    parser.add_argument("--workdir", type=Path, help="where bundles, broker state and logs go (default: a tempdir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (module logs) afterwards")
    args = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if (
        min(args.readings, args.repeats, args.naive_readings, args.rss_devices, args.bundle_devices) < 1
        or args.latency_s <= 0
    ):
        parser.error("counts and --latency-s must be positive")
    if args.rss_devices >= SYNTHETIC_DEVICES:
        args.rss_devices = SYNTHETIC_DEVICES - 1  # one device's reading is the one waiting at the restart
    return args


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run every measurement and return the JSON payload."""
    load_avg_1m = os.getloadavg()[0]
    timings: dict[str, float] = {}
    deployment = load_deployment(TEMPLATE)
    sensor_desired = deployment.desired("sensor")
    batch_window_ms = int(sensor_desired.get("batchWindowMs", 200))
    max_batch_bytes = int(sensor_desired.get("maxBatchBytes", 3900))
    threshold = float(deployment.desired("inference").get("poorModelThreshold", 1.0))
    ips = IpBlocks()

    say(f"building a bundle: {args.bundle_devices} devices x {args.bundle_rows} rows, {DEVICE_FAMILY} only ...")
    bundle = build_bundle(workdir, args.bundle_devices, args.bundle_rows, threshold)
    timings["bundle_build_s"] = bundle.build_s
    if not bundle.serving:
        raise RuntimeError("no device of the bundle is served by its own model; cannot benchmark device models")
    say(f"    {bundle.n_devices} devices, {len(bundle.serving)} served by their own model ({bundle.family})")
    jobs = f"{args.repeats} x {args.readings:,} readings"

    started = time.perf_counter()
    say(f"1/5 bare relay on one plain Mosquitto, single and batched: {jobs} ...")
    relay = measure_bare_relay(workdir, bundle.serving, args.readings, args.repeats, (max_batch_bytes, batch_window_ms))
    timings["bare_relay_s"] = time.perf_counter() - started
    say(f"    single {relay.single.rps:,.0f} readings/s, batched {relay.batched.rps:,.0f} readings/s")

    started = time.perf_counter()
    say(f"2/5 ceiling: module path with PREDICTOR=passthrough, {jobs} ...")
    ceiling, _ = measure_module_path(
        workdir / "edge-ceiling", deployment, bundle, ips.next(), "passthrough", args.readings, args.repeats
    )
    timings["ceiling_s"] = time.perf_counter() - started

    started = time.perf_counter()
    say(f"3/5 ours: PREDICTOR=bundle, {jobs}, then {args.latency_s:g} s at {LATENCY_RATE_PER_S:,.0f} readings/s ...")
    ours, latency = measure_module_path(
        workdir / "edge-ours",
        deployment,
        bundle,
        ips.next(),
        "bundle",
        args.readings,
        args.repeats,
        latency=(LATENCY_RATE_PER_S, args.latency_s),
    )
    timings["ours_s"] = time.perf_counter() - started
    if latency is not None:
        say(f"    latency p50 {fmt(latency.p50_ms)} ms, p99 {fmt(latency.p99_ms)} ms")

    started = time.perf_counter()
    say(f"4/5 naive: PREDICTOR=naive-sklearn, {args.naive_readings:,} readings ...")
    naive, _ = measure_module_path(
        workdir / "edge-naive", deployment, bundle, ips.next(), "naive-sklearn", args.naive_readings
    )
    timings["naive_s"] = time.perf_counter() - started

    started = time.perf_counter()
    say(
        f"5/5 {SYNTHETIC_DEVICES:,}-device bundle: first prediction after spawn, RSS after {args.rss_devices:,} devices"
    )
    synthetic = measure_synthetic(workdir, deployment, bundle, ips.next(), args.rss_devices)
    timings["bundle10k_s"] = time.perf_counter() - started

    runs = {"bare relay": relay.single, "relay batched": relay.batched, "ceiling": ceiling, "ours": ours}
    runs["naive"] = naive
    cpu = {name: run.cpu_ms_per_1000() for name, run in runs.items()}
    ours_stats = ours.last.stats
    predictions = ours_stats.get("predictions", 0)
    lat_stats = latency.stats if latency else {}
    lat_sensor = latency.sensor_stats if latency else {}
    other: Counter[str] = Counter()
    for run in (ceiling, ours, naive):
        other.update(run.upstream_other)
    targets = {**TARGETS, "latency_p99_ms": LATENCY_BUDGET_MS + batch_window_ms}
    metrics: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_start": load_avg_1m,
        "readings": args.readings,
        "repeats": args.repeats,
        "naive_readings": args.naive_readings,
        "bundle_devices": bundle.n_devices,
        "served_devices": len(bundle.serving),
        "device_model_family": bundle.family,
        "device_model_share": ratio(ours_stats.get("device_model"), predictions),
        "bare_relay_rps": relay.single.rps,
        "bare_relay_batched_rps": relay.batched.rps,
        "ceiling_rps": ceiling.rps,
        "ceiling_vs_bare_relay": ratio(ceiling.rps, relay.single.rps),
        "ours_rps": ours.rps,
        "ours_vs_ceiling": ratio(ours.rps, ceiling.rps),
        "naive_rps": naive.rps,
        "ours_vs_naive": ratio(ours.rps, naive.rps),
        # The model-serving cost alone: the inference process's CPU per reading, naive over ours.
        "inference_cpu_naive_vs_ours": ratio(cpu["naive"].get("inference"), cpu["ours"].get("inference")),
        "rps_all_runs": {name: run.rps_all for name, run in runs.items()},
        "complete": {name: run.complete for name, run in runs.items()},
        "field_publisher_rps": {name: run.publisher_rps() for name, run in runs.items()},
        "latency_rate_rps": LATENCY_RATE_PER_S,
        "latency_achieved_rate_rps": latency.achieved_rate_per_s if latency else None,
        "latency_p50_ms": latency.p50_ms if latency else None,
        "latency_p99_ms": latency.p99_ms if latency else None,
        "latency_max_ms": latency.max_ms if latency else None,
        "latency_matched": f"{latency.matched}/{latency.readings}" if latency else None,
        "batch_window_ms": batch_window_ms,
        "max_batch_bytes": max_batch_bytes,
        "latency_legs_ms": latency.segments_ms if latency else None,
        "inference_reported_latency_ms": lat_stats.get("latency"),
        "bundle10k_devices": synthetic.devices_in_bundle,
        "bundle10k_model_mb": synthetic.bundle_mb,
        "bundle10k_first_prediction_s": synthetic.first_prediction_s,
        "bundle10k_startup_marks_s": synthetic.startup_marks_s,
        "bundle10k_verify_s": synthetic.verify_s,
        "bundle10k_rss_mb": synthetic.rss_mb,
        "bundle10k_hwm_mb": synthetic.hwm_mb,
        "bundle10k_served_devices": f"{synthetic.served_arrived}/{synthetic.served_devices}",
        "bundle10k_cold_devices_per_s": synthetic.served_arrived / max(synthetic.serve_s, 1e-9),
        "bundle10k_model_loads": synthetic.stats.get("model_loads"),
        "bundle10k_cached_model_mb": synthetic.stats.get("cached_model_bytes", 0) / 2**20,
        # Headline at a steady 1,000 readings/s (the latency run): an edge's normal load, not a saturating burst.
        "units_4kb_per_1000_predictions": units_per_1000(lat_stats, "predictions", lat_stats.get("predictions", 0)),
        "units_4kb_per_1000_predictions_at_max_rate": units_per_1000(ours_stats, "predictions", predictions),
        "upstream_units_4kb_per_1000_readings": upstream_units(lat_stats, lat_sensor) if latency else None,
        "upstream_units_4kb_per_1000_readings_at_max_rate": upstream_units(ours_stats, ours.last.sensor_stats),
        "prediction_bytes_mean": mean_bytes(lat_stats, "predictions", lat_stats.get("predictions", 0)),
        "telemetry_bytes_per_reading": mean_bytes(lat_sensor, "telemetry", lat_sensor.get("readings", 0)),
        "prediction_messages_per_1000": per_1000(lat_stats, "predictions", lat_stats.get("predictions", 0)),
        "cpu_ms_per_1000_readings": cpu,
        "upstream_other_messages": dict(other),
        "timings_s": timings,
    }
    meets = meets_targets(metrics, targets)
    print_report(metrics, meets, targets)
    return rounded({**metrics, "targets": targets, "meets": meets})


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark in a work directory; print the report, then the JSON line."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    # SIGTERM would end us without unwinding: turn it into SystemExit so every `finally` stops its processes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    owned = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-edge-bench-")) if owned else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        payload = run_benchmark(args, workdir)
    finally:
        stop_children()
        if owned and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            say(f"work directory kept: {workdir}")
    payload["timings_s"]["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(payload), flush=True)


if __name__ == "__main__":
    main()
