"""Shared fixtures: real local Spark, real MLflow (sqlite), bundles built by the real code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgefleet.history import write_history
from simulator.history import HistorySpec, apply_data_fault, device_history, generate_history
from simulator.physics import FEATURES

pytest_plugins = ["tests.edge_fixtures", "tests.field_auth", "tests.hub_logins"]

END_TS_S = pd.Timestamp("2026-11-01T00:00:00Z").timestamp()
BAD_DEVICES = {
    "bad-few-rows": ("few_rows", "too_few_rows"),
    "bad-nan-labels": ("nan_labels", "non_finite_values"),
    "bad-constant": ("constant_label", "constant_label"),
    "bad-stale": ("stale", "stale_data"),
    "bad-fit-raises": ("broken_sensor", "all_candidates_failed"),
}


def fleet_history(n_devices: int, rows: int, seed: int = 3) -> pd.DataFrame:
    """Return a healthy fleet plus one device per data fault (named in BAD_DEVICES)."""
    frames = [generate_history(HistorySpec(n_devices=n_devices, rows_per_device=rows, seed=seed))]
    rng = np.random.default_rng(seed)
    for device_id, (fault, _) in BAD_DEVICES.items():
        healthy = device_history(device_id, seed, rows, END_TS_S, 300.0)
        frames.append(apply_data_fault(healthy, fault, rng))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """Start one local Spark (2 cores) for the session; training code joins it."""
    from cloud_training.spark_job import spark_session

    with spark_session("local[2]", driver_memory="2g", app_name="edgefleet-tests") as handle:
        yield handle.session


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build a bundle with the pure functions (no Spark): 6 devices, one poor, one skipped."""
    from cloud_training.device_training import TrainingConfig
    from cloud_training.export import write_bundle
    from cloud_training.fleet import train_fleet_locally

    history = fleet_history(6, 240, seed=11)
    config = TrainingConfig(features=FEATURES, reference_ts_s=END_TS_S, fleet_rows_per_device=200)
    results, fleet = train_fleet_locally((g for _, g in history.groupby("device_id")), config)
    # One device whose own model is judged poor, so the bundle has a `fallback` entry.
    poor = results.index[results["status"] == "trained"][0]
    results.loc[poor, ["status", "reason"]] = ["fallback", "poor_model"]
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    write_bundle(out, results, fleet, config)
    return out


@pytest.fixture(scope="session")
def trained(spark: object, tmp_path_factory: pytest.TempPathFactory) -> object:
    """Run one real training session: Spark applyInPandas, MLflow sqlite store and registry."""
    from cloud_training.pipeline import run_training
    from cloud_training.settings import TrainSettings

    work = tmp_path_factory.mktemp("train")
    history = write_history(fleet_history(24, 300), work / "history.parquet")
    settings = TrainSettings(
        history=history,
        out=work / "bundle",
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        registered_model="fleet-under-test",
        master="local[2]",
    )
    return run_training(settings)
