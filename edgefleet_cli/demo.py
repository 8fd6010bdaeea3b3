"""`edgefleet demo`: the whole loop on this machine, start to finish.

history → train on local Spark (MLflow) → bundle → the edge with the simulator (some devices
drift halfway) → retrain on the lake → the edge again with the retrained bundle → a summary
on the terminal and an HTML report. The drifted devices' live error rises after the drift
and falls after the retrain; the summary shows both.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from edgefleet.deployment import DEFAULT_TEMPLATE
from edgefleet.history import write_history
from simulator.history import HistorySpec, generate_history

if TYPE_CHECKING:
    from rich.console import Console

    from simulator.profile import SimulatorProfile
    from simulator.report import SimulationReport

__all__ = ["EdgeRun", "run_demo"]

TEMPLATE = Path(DEFAULT_TEMPLATE)


@dataclass(frozen=True)
class EdgeRun:
    """One run of the edge with the simulator: the lake, the modules' last counters, the simulator's report."""

    lake: Path
    rows: pd.DataFrame
    deadletters: list[dict[str, Any]]
    simulation: dict[str, Any]  # the simulator's JSON report ({} when it did not finish)
    sensor: dict[str, Any]
    inference: dict[str, Any]
    duration_s: float
    bundle_version: str
    cpu_s: dict[str, float]  # CPU seconds of the sensor, inference and brokers while the simulator ran


def run_demo(
    workdir: Path,
    devices: int,
    rows: int,
    seed: int,
    edge_seconds: float = 60.0,
    rate_per_s: float = 2.0,
    dashboard_port: int | None = None,
) -> int:
    """Run the loop; return 0 when every step worked and no reading was lost."""
    from edgefleet_cli.console import console

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    history = _write_demo_history(workdir, devices, rows, seed)
    bundle_dir = _train(history, workdir, tracking_uri)
    if bundle_dir is None:
        return 1
    profile = _demo_profile(seed, edge_seconds, devices, rate_per_s)
    console.rule(f"3/5 the edge with the simulator for {edge_seconds:.0f} s (some devices drift at 1/3)")
    if dashboard_port is not None:
        console.print(f"live dashboard while the edge runs: http://127.0.0.1:{dashboard_port}/")
    first = _run_edge(workdir / "edge-1", bundle_dir, profile, "127.0.81", dashboard_port)
    drifted = sorted({d for event in _relation_events(first.simulation) for d in event.get("devices", [])})
    drift_at = _drift_time(first.simulation)
    retrained_dir = _retrain(first, bundle_dir, workdir, tracking_uri)
    console.rule(f"5/5 the edge with the retrained bundle for {edge_seconds / 2:.0f} s (drift in effect)")
    after = _after_retrain_profile(profile, first, drifted, edge_seconds / 2)
    second = _run_edge(workdir / "edge-2", retrained_dir, after, "127.0.82", dashboard_port)
    return _report(workdir, first, second, bundle_dir, retrained_dir, drifted, drift_at, tracking_uri)


def _write_demo_history(workdir: Path, devices: int, rows: int, seed: int) -> Path:
    """Write the seeded fleet history (5% of devices with data faults) and say so."""
    from edgefleet_cli.console import console

    history = write_history(
        generate_history(HistorySpec(n_devices=devices, rows_per_device=rows, seed=seed, bad_fraction=0.05)),
        workdir / "history.parquet",
    )
    console.rule(f"1/5 history: {devices} devices x {rows} readings -> {history}")
    return history


def _train(history: Path, workdir: Path, tracking_uri: str) -> Path | None:
    """Train where `auto` chooses, track in MLflow, export; return the verified bundle (None: it failed)."""
    from cloud_training.pipeline import run_training
    from cloud_training.settings import TrainSettings
    from edgefleet.bundle import verify_bundle
    from edgefleet_cli.console import console, render_training, training_progress

    settings = TrainSettings(
        history=history, out=workdir / "bundle", tracking_uri=tracking_uri, registered_model="edgefleet-demo"
    )
    console.rule("2/5 train (in-process or on local Spark), track in MLflow, export the bundle")
    with training_progress() as on_progress:
        outcome = run_training(settings, on_progress, on_choice=lambda line: console.print(line, markup=False))
    render_training(outcome)
    problems = verify_bundle(outcome.bundle_dir)
    for problem in problems:
        console.print(f"[red]BAD[/red] {problem}")
    return None if problems else outcome.bundle_dir


def _demo_profile(seed: int, edge_seconds: float, devices: int, rate_per_s: float) -> SimulatorProfile:
    """Return the simulator's demo profile for this fleet, seed and duration."""
    from simulator.profile import DEMO_PROFILE, load_profile, with_overrides

    profile = with_overrides(load_profile(DEMO_PROFILE), seed=seed, duration_s=edge_seconds)
    return _fleet_of(profile, devices, rate_per_s)


def _retrain(first: EdgeRun, bundle_dir: Path, workdir: Path, tracking_uri: str) -> Path:
    """Retrain on the first run's lake against the trained bundle; return the retrained bundle."""
    from cloud_training.retrain import run_retrain
    from cloud_training.settings import RetrainSettings
    from edgefleet_cli.console import console

    console.rule("4/5 retrain on the lake: challengers vs champions, fresh hold-out")
    retrained = run_retrain(
        RetrainSettings(
            lake=first.lake,
            bundle=bundle_dir,
            out=workdir / "bundle-retrained",
            tracking_uri=tracking_uri,
            registered_model="edgefleet-demo",
            # The stream continues the generated history (simulated time), before the bundle was built.
            since=first.simulation["start_ts"],
        )
    )
    console.print(
        f"retrained bundle {retrained.bundle_version}: alias moved: {retrained.alias_moved}; "
        f"manifest {retrained.manifest_path}"
    )
    return retrained.bundle_dir


def _after_retrain_profile(
    profile: SimulatorProfile, first: EdgeRun, drifted: list[str], duration_s: float
) -> SimulatorProfile:
    """Return the profile that continues the first run, with its drifted devices drifted from the start."""
    from simulator.profile import DriftEvent, with_overrides

    return with_overrides(
        profile,
        duration_s=duration_s,
        start_ts=_sim_end(first.simulation),
        drift=(DriftEvent(at_s=0.0, devices=tuple(drifted)),) if drifted else (),
    )


def _report(
    workdir: Path,
    first: EdgeRun,
    second: EdgeRun,
    bundle_dir: Path,
    retrained_dir: Path,
    drifted: list[str],
    drift_at: datetime | None,
    tracking_uri: str,
) -> int:
    """Print the summary, write report.html and summary.json; return 0 when no reading was lost."""
    from edgefleet_cli.console import console

    summary = _summary(first, second, bundle_dir, retrained_dir, drifted, drift_at)
    _render(summary, console)
    report = _write_report(workdir / "report.html", summary, first, second, drift_at)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    console.print(f"report: {report}   summary: {workdir / 'summary.json'}")
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri}")
    lost = summary["phases"]["before retrain"]["accounting"].get("lost", 0)
    lost += summary["phases"]["after retrain"]["accounting"].get("lost", 0)
    return 0 if lost == 0 else 1


def _fleet_of(profile: SimulatorProfile, devices: int, rate_per_s: float) -> SimulatorProfile:
    """Return the profile with its device types scaled to `devices` in total, each at `rate_per_s`."""
    from simulator.profile import with_overrides

    types = list(profile.device_types)
    total = sum(t.count for t in types)
    counts = [max(1, round(t.count * devices / total)) for t in types]
    counts[0] += devices - sum(counts)
    scaled = tuple(
        t.model_copy(update={"count": count, "rate_per_s": rate_per_s})
        for t, count in zip(types, counts, strict=True)
        if count > 0
    )
    return with_overrides(profile, device_types=scaled)


def _run_edge(
    workdir: Path, bundle_dir: Path, profile: SimulatorProfile, ip_base: str, dashboard_port: int | None = None
) -> EdgeRun:
    """Run the edge with the simulator once; return the lake, counters and the simulator's report."""
    from edgefleet.bundle import read_manifest
    from edgefleet.deployment import load_deployment
    from edgefleet.lake import read_deadletters, read_lake
    from edgefleet_cli.local_edge import FieldEndpoint, LocalEdge, replay_module_env
    from edgefleet_cli.process_cpu import edge_cpu_seconds
    from edgefleet_cli.up import poll, run_up, simulate_on

    version = read_manifest(bundle_dir).bundle_version
    # A rerun starts clean: an old lake, or a broker's persisted queue, would mix into the figures.
    shutil.rmtree(workdir, ignore_errors=True)
    lake_dir = workdir / "lake"
    edge = LocalEdge(
        workdir,
        load_deployment(TEMPLATE),
        bundle_dir=bundle_dir,
        ip_base=ip_base,
        desired_overrides={"inference": {"expectedBundleVersion": version}},
        module_env=replay_module_env(profile.start_ts),
        lake_dir=lake_dir,
        dashboard_port=dashboard_port,
    )
    progress: dict[str, Any] = {}
    cpu_before: dict[str, float] = {}

    def simulation(endpoint: FieldEndpoint, stop: threading.Event) -> SimulationReport:
        cpu_before.update(edge_cpu_seconds())  # the edge is up: its start is not counted
        return simulate_on(endpoint, profile, stop, on_progress=progress.update)

    with edge:
        result = run_up(
            edge, threading.Event(), simulation=simulation, simulator_progress=progress, live=sys.stderr.isatty()
        )
        final = poll(edge)
        cpu_after = edge_cpu_seconds()  # every reading answered, nothing stopped yet
    simulation_report = result.simulation.to_json_obj() if result.simulation is not None else {}
    return EdgeRun(
        lake=lake_dir,
        rows=read_lake(lake_dir, keep_duplicates=True),  # the report counts duplicate deliveries
        deadletters=read_deadletters(lake_dir),
        simulation=simulation_report,
        sensor=final.sensor or result.last.sensor,
        inference=final.inference or result.last.inference,
        duration_s=result.duration_s,
        bundle_version=version,
        cpu_s={role: max(0.0, used - cpu_before.get(role, 0.0)) for role, used in cpu_after.items()},
    )


def _relation_events(simulation: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the simulator's concept drift events (the demo replays and scores those)."""
    return [event for event in simulation.get("drift") or [] if event.get("kind", "relation") == "relation"]


def _drift_time(simulation: dict[str, Any]) -> datetime | None:
    """Return the simulated time of the first relation drift event."""
    events = _relation_events(simulation)
    if not events or not simulation.get("start_ts"):
        return None
    start = pd.Timestamp(simulation["start_ts"]).to_pydatetime()
    return start + timedelta(seconds=float(events[0]["at_s"]))


def _sim_end(simulation: dict[str, Any]) -> datetime:
    """Return the simulated time where a run ended (the next run continues from there)."""
    if simulation.get("end_ts"):
        return pd.Timestamp(simulation["end_ts"]).to_pydatetime() + timedelta(seconds=1)
    start = pd.Timestamp(simulation["start_ts"]).to_pydatetime()
    return start + timedelta(seconds=float(simulation.get("planned_duration_s") or simulation["elapsed_s"]) + 1)


def _phase(run: EdgeRun, bundle_dir: Path, drifted: list[str], split: datetime | None) -> dict[str, Any]:
    from edgefleet.lake import read_drift_alerts
    from edgefleet_cli.edge_report import (
        account,
        cpu_per_1000_readings,
        drift_detection,
        latency,
        live_accuracy,
        units_per_1000_predictions,
        upstream_cost,
    )

    rows = run.rows
    sim = run.simulation
    predictions = rows[rows["source_module"] == "inference"] if len(rows) else rows
    accounting = account(rows, run.deadletters, sim.get("expected_at_edge"))
    phase: dict[str, Any] = {
        "bundle_version": run.bundle_version,
        "accounting": accounting,
        "throughput_predictions_per_s": round(len(predictions) / run.duration_s, 1) if run.duration_s else None,
        "edge_latency": latency(rows),
        "units_4kb_per_1000_predictions": units_per_1000_predictions(run.inference),
        "upstream": upstream_cost(run.sensor, run.inference, accounting.get("sent")),
        "cpu_ms_per_1000_readings": cpu_per_1000_readings(run.cpu_s, accounting.get("sent")),
        "fallbacks": (run.inference or {}).get("fallbacks", {}),
        "live_accuracy": live_accuracy(rows, bundle_dir),
        "drift_alerts": drift_detection(
            read_drift_alerts(run.lake), drifted, set(predictions["device_id"]) if len(predictions) else set()
        ),
    }
    drifted_rows = rows[rows["device_id"].isin(drifted)] if drifted and len(rows) else rows.iloc[0:0]
    if drifted:
        windows: dict[str, tuple[datetime | None, datetime | None]] = {"drifted devices": (None, None)}
        if split is not None:
            windows = {"drifted devices before drift": (None, split), "drifted devices after drift": (split, None)}
        for name, (since, until) in windows.items():
            phase[name] = live_accuracy(drifted_rows, bundle_dir, since, until)["by_model"].get("device")
    return phase


def _summary(
    first: EdgeRun,
    second: EdgeRun,
    bundle_1: Path,
    bundle_2: Path,
    drifted: list[str],
    drift_at: datetime | None,
) -> dict[str, Any]:
    return {
        "drifted_devices": drifted,
        "drift_at": drift_at,
        "phases": {
            "before retrain": _phase(first, bundle_1, drifted, drift_at),
            "after retrain": _phase(second, bundle_2, drifted, None),
        },
    }


def _render(summary: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title="edgefleet demo: the loop")
    table.add_column("")
    for name in summary["phases"]:
        table.add_column(name, justify="right")

    def cell(phase: dict[str, Any], *path: str) -> str:
        value: object = phase
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, float):
            return f"{value:,.4g}"
        return "–" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    rows = [
        ("bundle", ("bundle_version",)),
        ("readings sent (unique)", ("accounting", "sent")),
        ("expected at the edge (valid)", ("accounting", "expected_valid")),
        ("predicted", ("accounting", "predicted")),
        ("lost", ("accounting", "lost")),
        ("dead letters", ("accounting", "deadletters")),
        ("predictions/s", ("throughput_predictions_per_s",)),
        ("edge latency p50 ms", ("edge_latency", "p50_ms")),
        ("edge latency p99 ms", ("edge_latency", "p99_ms")),
        ("4 KB units / 1,000 predictions", ("units_4kb_per_1000_predictions",)),
        ("4 KB units upstream / 1,000 readings (all)", ("upstream", "units_4kb_per_1000_readings")),
        ("bytes upstream / reading (all)", ("upstream", "bytes_per_reading")),
        ("CPU ms / 1,000 readings: sensor", ("cpu_ms_per_1000_readings", "sensor")),
        ("CPU ms / 1,000 readings: inference", ("cpu_ms_per_1000_readings", "inference")),
        ("CPU ms / 1,000 readings: brokers", ("cpu_ms_per_1000_readings", "brokers")),
        ("CPU ms / 1,000 readings: the three", ("cpu_ms_per_1000_readings", "total")),
        ("live MSE, device models", ("live_accuracy", "device_vs_fleet", "device_model", "mse")),
        ("live MSE, fleet model on the same readings", ("live_accuracy", "device_vs_fleet", "fleet_model", "mse")),
        ("drifted devices: MSE before drift", ("drifted devices before drift", "mse")),
        ("drifted devices: MSE after drift", ("drifted devices after drift", "mse")),
        ("drifted devices: MSE (retrained)", ("drifted devices", "mse")),
        ("edge drift alerts: drifted devices flagged", ("drift_alerts", "detected")),
        ("edge drift alerts: stable devices flagged", ("drift_alerts", "false_alarms")),
    ]
    phases = list(summary["phases"].values())
    for label, path in rows:
        table.add_row(label, *(cell(phase, *path) for phase in phases))
    console.print(table)
    for name, phase in summary["phases"].items():
        reasons = phase["accounting"].get("deadletters_by_reason") or {}
        if reasons:
            console.print(f"{name}: dead letters by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))


def _write_report(
    path: Path, summary: dict[str, Any], first: EdgeRun, second: EdgeRun, drift_at: datetime | None
) -> Path:
    from edgefleet_cli.edge_report import plots, write_html

    images = {f"before retrain: {k}": v for k, v in plots(first.rows, {"drift": drift_at} if drift_at else {}).items()}
    images.update({f"after retrain: {k}": v for k, v in plots(second.rows).items()})
    sections = dict(summary["phases"])
    sections["drift"] = {"at": str(drift_at), "devices": ", ".join(summary["drifted_devices"])}
    return write_html(path, "edgefleet demo", sections, images)
