"""Make the tiny world the Airflow DAG test retrains: a registered champion bundle and a lake with fresh rows.

Run with the main venv (`python -m scripts.airflow_dag_world DIR`); the DAG test in the Airflow venv
then points the DAG at DIR. Four devices trained on three-day-old history (pure local training, no
Spark), the bundle registered in DIR/mlflow.db as the champion, and a lake of the last few hours
where one device's relation changed, so the retrain picks and replaces it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cloud_training.device_training import TrainingConfig
from cloud_training.export import write_bundle
from cloud_training.fleet import train_fleet_locally
from cloud_training.tracking import Tracker
from edgefleet.lake import append_to_lake
from simulator.history import device_history
from simulator.physics import FEATURES, make_profile

SEED = 7
DEVICES = tuple(f"dev-{i:05d}" for i in range(4))
DRIFTED = "dev-00001"
HISTORY_ROWS = 200
FRESH_ROWS = 120
INTERVAL_S = 300.0


def lake_rows(device_id: str, end: pd.Timestamp, drifted: bool, rng: np.random.Generator) -> pd.DataFrame:
    """Return a device's sensor rows in the lake's columns, ending at `end`."""
    profile = make_profile(device_id, SEED)
    if drifted:
        w0, w1, w2, w3 = profile.weights
        profile = dataclasses.replace(profile, weights=(-w0, -w1, -w2, -w3), bias=profile.bias + 4.0)
    ts_s = end.timestamp() - INTERVAL_S * np.arange(FRESH_ROWS - 1, -1, -1, dtype=float)
    x = profile.features(ts_s, rng)
    frame = pd.DataFrame(x, columns=list(FEATURES))
    frame.insert(0, "ts", pd.to_datetime(ts_s, unit="s", utc=True))
    frame.insert(0, "seq", np.arange(FRESH_ROWS))
    frame.insert(0, "device_id", device_id)
    frame["label"] = profile.label(x, rng)
    frame["prediction_value"] = np.nan
    frame["prediction_model_version"] = pd.Series([None] * FRESH_ROWS, dtype="string")
    frame["source_module"] = "sensor"
    return frame


def make_world(work: Path, registered_model: str) -> dict[str, str]:
    """Write DIR/bundle (registered as the champion in DIR/mlflow.db) and DIR/lake; return their paths."""
    now = pd.Timestamp.now(tz="UTC").floor("min")
    history_end_s = (now - pd.Timedelta(days=3)).timestamp()
    history = [device_history(d, SEED, HISTORY_ROWS, history_end_s, INTERVAL_S) for d in DEVICES]
    config = TrainingConfig(features=FEATURES, fleet_rows_per_device=100)
    results, fleet = train_fleet_locally(history, config)
    bundle = work / "bundle"
    write_bundle(bundle, results, fleet, config)

    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    tracker = Tracker(tracking_uri, "edgefleet", "scalable")
    tracker.start({"source": "airflow DAG test champion"})
    tracker.finish({}, results, [], bundle, FEATURES, registered_model)

    rng = np.random.default_rng(SEED)
    fresh_end = now - pd.Timedelta(minutes=10)
    rows = pd.concat([lake_rows(d, fresh_end, d == DRIFTED, rng) for d in DEVICES], ignore_index=True)
    lake = work / "lake"
    append_to_lake(lake, rows)
    return {"bundle": str(bundle), "lake": str(lake), "tracking_uri": tracking_uri, "drifted": DRIFTED}


def main() -> None:
    """Build the world in the directory given; print its paths as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--registered-model", default="edgefleet-airflow-test")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(make_world(args.dir.resolve(), args.registered_model)))


if __name__ == "__main__":
    main()
