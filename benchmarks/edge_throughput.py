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

The harness (processes, brokers, measurement) is in `benchmarks/edge/harness.py`, the bundles in
`bundles.py`, each measured phase in `phases.py`, and the figures, targets and table in `report.py`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks.edge` is found from the repository root

from benchmarks.edge.bundles import DEVICE_FAMILY, build_bundle  # noqa: E402
from benchmarks.edge.harness import IpBlocks, say, stop_children  # noqa: E402
from benchmarks.edge.phases import (  # noqa: E402
    LATENCY_RATE_PER_S,
    SYNTHETIC_DEVICES,
    measure_bare_relay,
    measure_module_path,
    measure_synthetic,
)
from benchmarks.edge.report import (  # noqa: E402
    LATENCY_BUDGET_MS,
    TARGETS,
    build_metrics,
    meets_targets,
    print_report,
    rounded,
)
from edgefleet.deployment import DEFAULT_TEMPLATE, load_deployment  # noqa: E402
from edgefleet.desired import DEFAULT_MAX_BATCH_BYTES, DEFAULT_UPSTREAM_WINDOW_MS  # noqa: E402

TEMPLATE = REPO / DEFAULT_TEMPLATE
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

T = TypeVar("T")


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
    max_batch_bytes = int(sensor_desired.get("maxBatchBytes", DEFAULT_MAX_BATCH_BYTES))
    threshold = float(deployment.desired("inference").get("poorModelThreshold", 1.0))
    upstream_window_ms = int(deployment.desired("inference").get("upstreamWindowMs", DEFAULT_UPSTREAM_WINDOW_MS))
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
    metrics["upstream_window_ms"] = upstream_window_ms
    # A prediction may wait both windows: the sensor's batch, then the inference module's upstream batch.
    targets = {**TARGETS, "latency_p99_ms": LATENCY_BUDGET_MS + batch_window_ms + upstream_window_ms}
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
