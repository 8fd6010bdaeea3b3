"""The edge benchmark's report: every figure in one dict, the targets it meets, the table, the JSON line."""

from __future__ import annotations

import argparse
import math
import os
from collections import Counter
from typing import Any

from benchmarks.edge.bundles import BenchBundle
from benchmarks.edge.harness import fmt, say
from benchmarks.edge.phases import LATENCY_RATE_PER_S, SYNTHETIC_DEVICES, Latency, RelayRuns, Repeated, Synthetic

LATENCY_BUDGET_MS = 20.0  # the p99 target is this on top of the sensor's batch window and the upstream window
TARGETS: dict[str, float] = {
    "ours_vs_ceiling": 0.70,
    "ours_vs_naive": 20.0,
    "latency_p99_ms": math.nan,  # LATENCY_BUDGET_MS + the batch window, set once the manifest is read
    "bundle10k_rss_mb": 500.0,
    "bundle10k_first_prediction_s": 2.0,
    "units_4kb_per_1000_predictions": 100.0,
    "upstream_units_4kb_per_1000_readings": 25.0,  # issue 17: everything upstream, at 1,000 readings/s
    # Issue 17: the inference module's rate ≥ 0.7× the bare relay's. Its last batch waits the upstream
    # window (1 s) before it leaves, which is latency, not throughput: judged to the last prediction made.
    "ours_predicted_vs_bare_relay": 0.70,
}
# Metrics that must stay at or below their target; all others must reach at least theirs.
AT_MOST = frozenset(
    {
        "latency_p99_ms",
        "bundle10k_rss_mb",
        "bundle10k_first_prediction_s",
        "units_4kb_per_1000_predictions",
        "upstream_units_4kb_per_1000_readings",
    }
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


def upstream_units(metered: dict[str, int], sensor: dict[str, Any]) -> float | None:
    """Return all upstream units (whatever the routes sent to `$upstream`) per 1,000 readings the sensor took.

    `metered` is what the benchmark's upstream metered as IoT Hub bills it (body as sent, compressed
    or not, plus properties), so a route that is off costs nothing and compression counts.
    """
    return per_item(metered.get("units_4kb"), sensor.get("readings"), 1000)


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
    cpu = {name: run.cpu_ms_per_1000() for name, run in measured.items()}
    other: Counter[str] = Counter()
    for run in measured.values():
        other.update(run.upstream_other)
    # The JSON line keeps this key order: run, throughput, latency, 10k bundle, upstream cost, CPU.
    return {
        **run_figures(args, bundle, ours),
        **throughput_figures(measured, cpu),
        **latency_figures(latency, batch_window_ms, max_batch_bytes),
        **bundle10k_figures(synthetic),
        **upstream_cost_figures(latency, ours),
        "cpu_ms_per_1000_readings": cpu,
        "upstream_other_messages": dict(other),
    }


def run_figures(args: argparse.Namespace, bundle: BenchBundle, ours: Repeated | None) -> dict[str, Any]:
    """Return what was run: mode, sizes, the bundle, and the share of predictions by device models."""
    ours_stats = ours.last.stats if ours else {}
    return {
        "mode": "quick" if args.quick else "full",
        "cpu_count": os.cpu_count(),
        "readings": args.readings,
        "repeats": args.repeats,
        "naive_readings": args.naive_readings,
        "bundle_devices": bundle.n_devices,
        "served_devices": len(bundle.serving),
        "device_model_family": bundle.family,
        "device_model_share": per_item(ours_stats.get("device_model"), ours_stats.get("predictions")),
    }


def throughput_figures(measured: dict[str, Repeated], cpu: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Return readings/s of every measured path and their ratios."""
    rps = {name: run.rps for name, run in measured.items()}
    predicted = {name: run.predicted_rps for name, run in measured.items()}
    return {
        "bare_relay_rps": rps.get("bare relay"),
        "bare_relay_batched_rps": rps.get("relay batched"),
        "ceiling_rps": rps.get("ceiling"),
        "ceiling_vs_bare_relay": per_item(rps.get("ceiling"), rps.get("bare relay")),
        "ours_rps": rps.get("ours"),
        "ours_vs_ceiling": per_item(rps.get("ours"), rps.get("ceiling")),
        "ours_vs_bare_relay": per_item(rps.get("ours"), rps.get("bare relay")),
        # The module's own rate: to the last prediction made, not held by the upstream window.
        "ours_predicted_rps": predicted.get("ours"),
        "ours_predicted_vs_bare_relay": per_item(predicted.get("ours"), rps.get("bare relay")),
        "ceiling_predicted_rps": predicted.get("ceiling"),
        "naive_rps": rps.get("naive"),
        "ours_vs_naive": per_item(rps.get("ours"), rps.get("naive")),
        # The model-serving cost alone, free of the transport: inference CPU per reading, naive over ours.
        "inference_cpu_naive_vs_ours": per_item(
            cpu.get("naive", {}).get("inference"), cpu.get("ours", {}).get("inference")
        ),
        "rps_all_runs": {name: run.rps_all for name, run in measured.items()},
        "complete": {name: run.complete for name, run in measured.items()},
        "field_publisher_rps": {name: run.publisher_rps() for name, run in measured.items()},
    }


def latency_figures(latency: Latency | None, batch_window_ms: int, max_batch_bytes: int) -> dict[str, Any]:
    """Return the fixed-rate latency run's percentiles and legs, beside the sensor's batching."""
    lat_stats = latency.stats if latency else {}
    return {
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
    }


def bundle10k_figures(synthetic: Synthetic | None) -> dict[str, Any]:
    """Return the 10,000-device bundle's start, memory and cold-serving figures."""
    return {
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
    }


def upstream_cost_figures(latency: Latency | None, ours: Repeated | None) -> dict[str, Any]:
    """Return IoT Hub 4 KB units and message sizes, at 1,000 readings/s and at full speed."""
    lat_stats = latency.stats if latency else {}
    lat_sensor = latency.sensor_stats if latency else {}
    lat_upstream = latency.upstream if latency else {}
    ours_stats = ours.last.stats if ours else {}
    # The headline is at a steady 1,000 readings/s (the latency run), an edge's normal load;
    # a saturating burst packs predictions into fuller messages and is reported beside it.
    return {
        "units_4kb_per_1000_predictions": per_item(
            outbox_figure(lat_stats, "units_4kb", "predictions"), lat_stats.get("predictions"), 1000
        ),
        "units_4kb_per_1000_predictions_at_max_rate": per_item(
            outbox_figure(ours_stats, "units_4kb", "predictions"), ours_stats.get("predictions"), 1000
        ),
        "upstream_units_4kb_per_1000_readings": upstream_units(lat_upstream, lat_sensor),
        "upstream_units_4kb_per_1000_readings_at_max_rate": upstream_units(
            ours.last.upstream if ours else {}, ours.last.sensor_stats if ours else {}
        ),
        "upstream_bytes_per_reading": per_item(lat_upstream.get("bytes"), lat_sensor.get("readings")),
        "upstream_messages_per_1000_readings": per_item(lat_upstream.get("messages"), lat_sensor.get("readings"), 1000),
        "prediction_bytes_mean": per_item(
            outbox_figure(lat_stats, "bytes", "predictions"), lat_stats.get("predictions")
        ),
        "prediction_messages_per_1000": per_item(
            outbox_figure(lat_stats, "sent", "predictions"), lat_stats.get("predictions"), 1000
        ),
        "telemetry_bytes_per_reading": per_item(
            outbox_figure(lat_sensor, "bytes", "telemetry"), lat_sensor.get("readings")
        ),
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
    "inference (readings/s, first field publish to last prediction upstream; predicted: to the last made)": (
        "ours_rps",
        "ours_vs_ceiling",
        "ours_vs_bare_relay",
        "ours_predicted_rps",
        "ours_predicted_vs_bare_relay",
        "ceiling_predicted_rps",
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
        "upstream_bytes_per_reading",
        "upstream_messages_per_1000_readings",
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
