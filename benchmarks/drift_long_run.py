"""Run `edgefleet up --simulate` over days of simulated time and score the edge's drift alerts.

The fleet is trained on a week of generated history (one reading every 300 s), then streamed by
the simulator from where the history ends, one reading per device every 216 s of simulated time
(the drift monitor's feature slot), as fast as the edge takes it. Two drift events are scheduled:
a tenth of the devices change their hidden label relation (concept drift, for the residual
signal) and another tenth move to a warmer place (feature drift, `temperature_c` + 6 °C, for the
PSI signal). The simulator's usual faults stay on (stuck and spiking sensors, NaNs, missing
features, duplicates, reordering, bursts, silent devices).

Scored from the lake's `_events` (the alerts as the IoT Hub sink kept them) against the
simulator's plan:

- detection rate and delay per signal (residual alerts on relation-drifted devices, feature
  alerts on feature-drifted ones), the delay in simulated hours after the event;
- false alarms: devices with any alert that drifted in neither way, or alerted before their drift,
  as a share of devices and per 1,000 device-days.

No baseline exists for drift alerts, so the report gives rates, not a ratio. Prints a table and,
last, one JSON line. `--quick` (100 devices, 3 simulated days) takes about 80 s; the default
(200 devices, 6 days) about 4.5 minutes.

    .venv/bin/python benchmarks/drift_long_run.py [--quick] [--devices N] [--days D]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgefleet.lake import read_drift_alerts  # noqa: E402
from edgefleet.messages import parse_ts  # noqa: E402
from edgefleet_cli.local_edge import free_port  # noqa: E402

HISTORY_INTERVAL_S = 300.0
HISTORY_DAYS = 7.0
READING_INTERVAL_S = 216.0  # one reading per drift-monitor feature slot
SEED = 7
HISTORY_END = "2026-11-01T00:00:00Z"  # generate-history's default end; the stream continues it
SHIFT = {"temperature_c": 6.0}
RELATION_AT = 0.4  # fraction of the run when the relation changes
FEATURES_AT = 0.3  # fraction of the run when the features move
DRIFT_FRACTION = 0.1
RATE_CAP_PER_S = 2_000.0  # wall-clock readings/s the simulator sends at most
FULL = {"devices": 200, "days": 6.0}
QUICK = {"devices": 100, "days": 3.0}


def train(workdir: Path, devices: int) -> tuple[Path, float]:
    """Train a bundle on a week of history with the pure training functions; return (bundle, seconds)."""
    import pandas as pd

    from cloud_training.device_training import TrainingConfig
    from cloud_training.export import write_bundle
    from cloud_training.fleet import train_fleet_locally
    from simulator.history import HistorySpec, generate_history
    from simulator.physics import FEATURES

    started = time.perf_counter()
    spec = HistorySpec(
        n_devices=devices,
        rows_per_device=int(HISTORY_DAYS * 86_400 / HISTORY_INTERVAL_S),
        seed=SEED,
        interval_s=HISTORY_INTERVAL_S,
        end_ts=HISTORY_END,
    )
    history = generate_history(spec)
    config = TrainingConfig(
        features=FEATURES,
        families=("ridge", "random_forest"),
        reference_ts_s=pd.Timestamp(HISTORY_END).timestamp(),
        fleet_rows_per_device=200,
    )
    results, fleet = train_fleet_locally((group for _, group in history.groupby("device_id")), config)
    write_bundle(workdir / "bundle", results, fleet, config)
    return workdir / "bundle", time.perf_counter() - started


def write_profile(path: Path, devices: int, days: float, field_port: int) -> dict[str, Any]:
    """Write the simulator profile and return it."""
    from simulator.profile import DEMO_PROFILE, load_profile

    demo_faults = load_profile(DEMO_PROFILE).faults.model_dump()
    profile = {
        "seed": SEED,
        "start_ts": HISTORY_END,
        "duration_s": days * 86_400.0,
        "speed": 0,
        "rate_cap_per_s": RATE_CAP_PER_S,
        "device_types": [
            {"name": "pump", "count": devices, "id_prefix": "dev-", "rate_per_s": 1.0 / READING_INTERVAL_S}
        ],
        "mqtt": {"host": "127.0.0.1", "port": field_port, "qos": 1, "client_id": "drift-long-run"},
        "faults": demo_faults,
        "drift": [
            {"at_fraction": RELATION_AT, "device_fraction": DRIFT_FRACTION},
            {"at_fraction": FEATURES_AT, "device_fraction": DRIFT_FRACTION, "kind": "features", "feature_shift": SHIFT},
        ],
    }
    path.write_text(json.dumps(profile, indent=1))
    return profile


def run_up(workdir: Path, bundle: Path, profile: Path, field_port: int) -> float:
    """Run `edgefleet up --simulate` until the simulation ends; return its wall seconds."""
    command = [
        str(Path(sys.executable).parent / "edgefleet"),
        "up",
        "--bundle",
        str(bundle),
        "--simulate",
        str(profile),
        "--workdir",
        str(workdir / "edge"),
        "--lake",
        str(workdir / "lake"),
        "--field-port",
        str(field_port),
        "--ip-base",
        f"127.{160 + os.getpid() % 40}.9",
        "--no-dashboard",
    ]
    started = time.perf_counter()
    log = (workdir / "up.log").open("w")
    subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def score(workdir: Path, profile_obj: dict[str, Any]) -> dict[str, Any]:
    """Score the lake's drift alerts against the simulator's plan."""
    from simulator.fleet import plan_fleet
    from simulator.profile import parse_profile

    plan = plan_fleet(parse_profile(profile_obj, source="benchmark"))
    start = parse_ts(HISTORY_END)
    events = {event.kind: event for event in plan.drift}
    relation, features = events["relation"], events["features"]
    relation_at = start + timedelta(seconds=relation.at_s)
    features_at = start + timedelta(seconds=features.at_s)
    devices = [spec.device_id for spec in plan.devices]
    days = float(profile_obj["duration_s"]) / 86_400.0
    alerts = read_drift_alerts(workdir / "lake")
    by_device: dict[str, list[tuple[datetime, str]]] = {}
    for alert in alerts:
        kind = alert["drift"]["kind"]
        by_device.setdefault(alert["device_id"], []).append((parse_ts(alert["ts"]), kind))

    def detection(drifted: tuple[str, ...], at: datetime, kind: str) -> dict[str, Any]:
        delays_h = []
        for device_id in drifted:
            hits = [ts for ts, alert_kind in by_device.get(device_id, []) if alert_kind == kind and ts >= at]
            if hits:
                delays_h.append((min(hits) - at).total_seconds() / 3600.0)
        delays_h.sort()
        return {
            "drifted": len(drifted),
            "detected": len(delays_h),
            "detection_rate": round(len(delays_h) / len(drifted), 3) if drifted else None,
            "median_delay_h": round(delays_h[len(delays_h) // 2], 1) if delays_h else None,
            "max_delay_h": round(delays_h[-1], 1) if delays_h else None,
        }

    # A false alarm: an alert on a device that did not drift, or before the device's own drift.
    drift_start = dict.fromkeys(relation.device_ids, relation_at)
    for device_id in features.device_ids:
        drift_start[device_id] = min(drift_start.get(device_id, features_at), features_at)
    false_alarms: dict[str, list[str]] = {}
    for device_id, hits in by_device.items():
        since = drift_start.get(device_id)
        wrong = [kind for ts, kind in hits if since is None or ts < since]
        if wrong:
            false_alarms[device_id] = wrong
    stable = [d for d in devices if d not in drift_start]
    false_by_kind = {
        kind: sum(kinds.count(kind) for kinds in false_alarms.values()) for kind in ("residual", "feature")
    }
    # Moved inputs also make a model extrapolate: residual alerts on feature-drifted devices are true.
    residual_after_shift = sum(
        1
        for device_id in features.device_ids
        if any(kind == "residual" and ts >= features_at for ts, kind in by_device.get(device_id, []))
    )
    return {
        "devices": len(devices),
        "simulated_days": days,
        "alerts": len(alerts),
        "residual_on_relation_drift": detection(relation.device_ids, relation_at, "residual"),
        "feature_on_feature_drift": detection(features.device_ids, features_at, "feature"),
        "residual_alerts_on_feature_drifted_devices": residual_after_shift,
        "stable_devices": len(stable),
        "false_alarm_devices": len(false_alarms),
        "false_alarm_rate": round(len(false_alarms) / len(devices), 4),
        "false_alarms_by_signal": false_by_kind,
        "false_alarms_per_1000_device_days": round(1000 * sum(false_by_kind.values()) / (len(devices) * days), 2),
        "false_alarm_examples": sorted(false_alarms)[:10],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['devices']} devices, {QUICK['days']:g} days")
    parser.add_argument("--devices", type=int, help=f"simulated devices ({FULL['devices']})")
    parser.add_argument("--days", type=float, help=f"simulated days ({FULL['days']:g})")
    parser.add_argument("--workdir", help="keep the run here (default: a temporary directory)")
    args = parser.parse_args()
    chosen = QUICK if args.quick else FULL
    devices = args.devices or int(chosen["devices"])
    days = args.days or float(chosen["days"])
    with tempfile.TemporaryDirectory(prefix="edgefleet-drift-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        bundle, train_s = train(workdir, devices)
        field_port = free_port()
        profile = write_profile(workdir / "profile.json", devices, days, field_port)
        up_s = run_up(workdir, bundle, workdir / "profile.json", field_port)
        report = score(workdir, profile)
    report.update(
        train_s=round(train_s, 1),
        up_wall_s=round(up_s, 1),
        readings=int(devices * days * 86_400 / READING_INTERVAL_S),
    )
    residual, feature = report["residual_on_relation_drift"], report["feature_on_feature_drift"]
    print(f"{devices} devices x {days:g} simulated days ({report['readings']:,} readings) in {up_s:.0f} s wall")
    for name, row in (("residual alert, relation drift", residual), ("feature alert, feature drift", feature)):
        print(
            f"  {name:32} detected {row['detected']}/{row['drifted']}"
            f"  median delay {row['median_delay_h']} h  max {row['max_delay_h']} h (simulated)"
        )
    print(
        f"  false alarms: {report['false_alarm_devices']} of {devices} devices "
        f"({report['false_alarms_by_signal']}), {report['false_alarms_per_1000_device_days']} per 1,000 device-days"
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
