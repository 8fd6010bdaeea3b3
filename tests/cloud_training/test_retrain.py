"""Retraining end to end on local Spark and a real MLflow sqlite registry: drifted devices improve, the rest stay."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import edgefleet
from cloud_training.device_training import TrainingConfig
from cloud_training.export import write_bundle
from cloud_training.fleet import train_fleet_locally
from cloud_training.retrain import run_retrain
from cloud_training.settings import RetrainSettings
from cloud_training.tracking import Tracker
from edgefleet.bundle import BundleReader, read_manifest, verify_bundle
from edgefleet.deployment import DEFAULT_TEMPLATE, load_deployment, validate_deployment
from edgefleet.errors import BundleError, EdgefleetError, HistoryError
from edgefleet.history import write_history
from edgefleet.lake import append_to_lake
from edgefleet_cli.retrain_cli import register
from simulator.history import apply_data_fault, device_history
from simulator.physics import FEATURES, make_profile

SEED = 11
TEMPLATE = Path(__file__).resolve().parents[2] / DEFAULT_TEMPLATE
NOW = pd.Timestamp.now(tz="UTC").floor("min")
HISTORY_END_S = (NOW - pd.Timedelta(days=3)).timestamp()
KNOWN = [f"dev-{i:05d}" for i in range(6)]
DRIFTED = ("dev-00001", "dev-00003")
DRIFTED_LONG_AGO = "dev-00004"  # drifted too, but its lake rows are older than --since 24h
NEW_DEVICE = "dev-new"
CONSTANT = "bad-constant"
FRESH_ROWS = 160
REGISTERED = "retrain-under-test"


def lake_rows(device_id: str, n_rows: int, end: pd.Timestamp, drifted: bool, rng: np.random.Generator) -> pd.DataFrame:
    """Return a device's lake rows ending at `end` as the edge writes them: the inference module's, one per reading.

    Drifted devices' labels follow a changed relation. (The raw telemetry route is an opt-in: by default
    the lake holds only prediction rows, which carry each reading's features and label.)
    """
    profile = make_profile(device_id, SEED)
    if drifted:
        profile = dataclasses.replace(profile, weights=tuple(-w for w in profile.weights), bias=profile.bias + 4.0)
    ts_s = end.timestamp() - 300.0 * np.arange(n_rows - 1, -1, -1, dtype=float)
    x = profile.features(ts_s, rng)
    frame = pd.DataFrame(x, columns=list(FEATURES))
    frame.insert(0, "ts", pd.to_datetime(ts_s, unit="s", utc=True))
    frame.insert(0, "seq", np.arange(n_rows))
    frame.insert(0, "device_id", device_id)
    frame["label"] = profile.label(x, rng)
    # Served by an earlier bundle: retraining judges the edge's error only of the champion's own predictions.
    frame["prediction_value"] = frame["label"]
    frame["prediction_model_version"] = pd.Series(["an-earlier-bundle"] * n_rows, dtype="string")
    frame["source_module"] = "inference"
    return frame


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build a champion bundle (pure local path), register it, and fill a lake where some devices drifted."""
    work = tmp_path_factory.mktemp("retrain")
    rng = np.random.default_rng(SEED)
    history = [device_history(d, SEED, 240, HISTORY_END_S, 300.0) for d in KNOWN]
    history.append(apply_data_fault(device_history(CONSTANT, SEED, 240, HISTORY_END_S, 300.0), "constant_label", rng))
    config = TrainingConfig(features=FEATURES, fleet_rows_per_device=200)
    results, fleet = train_fleet_locally(history, config)
    history_path = write_history(pd.concat(history, ignore_index=True), work / "history.parquet")
    champion_dir = work / "bundle"
    champion = write_bundle(champion_dir, results, fleet, config)
    assert {champion.devices[d].status for d in KNOWN} == {"trained"}

    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    tracker = Tracker(tracking_uri, "edgefleet", "scalable")
    tracker.start({"source": "test champion"})
    registered = tracker.finish({}, results, [], champion_dir, FEATURES, REGISTERED)
    assert registered is not None and registered.champion

    fresh_end = NOW - pd.Timedelta(minutes=10)
    frames = [lake_rows(d, FRESH_ROWS, fresh_end, d in DRIFTED, rng) for d in KNOWN if d != DRIFTED_LONG_AGO]
    frames.append(lake_rows(DRIFTED_LONG_AGO, FRESH_ROWS, NOW - pd.Timedelta(hours=30), True, rng))
    frames.append(lake_rows(NEW_DEVICE, FRESH_ROWS, fresh_end, False, rng))
    constant = lake_rows(CONSTANT, FRESH_ROWS, fresh_end, False, rng).assign(label=3.0)
    frames.append(constant)
    # The champion served the first device's readings at the edge.
    served = frames[0].assign(prediction_model_version=champion.bundle_version)
    served["prediction_value"] = served["label"] + rng.normal(0.0, 0.5, len(served))
    frames[0] = served
    # An edge with the opt-in raw route also sends the sensor's rows of the same readings: one reading each.
    raw = served.assign(source_module="sensor", prediction_value=np.nan)
    raw["prediction_model_version"] = pd.Series([None] * len(raw), dtype="string")
    frames.append(raw)
    # Readings without ground truth cannot train or score anything.
    unlabelled = lake_rows("dev-00002", 20, fresh_end, False, rng).assign(label=np.nan, seq=np.arange(1000, 1020))
    frames.append(unlabelled)
    lake = work / "lake"
    rows = pd.concat(frames, ignore_index=True).astype({"prediction_model_version": "string"})
    append_to_lake(lake, rows)
    return {
        "work": work,
        "lake": lake,
        "champion_dir": champion_dir,
        "champion": champion,
        "tracking_uri": tracking_uri,
        "history": history_path,
    }


def _settings(world: dict[str, Any], bundle: Path, out: Path, **overrides: Any) -> RetrainSettings:
    values: dict[str, Any] = {
        "lake": world["lake"],
        "bundle": bundle,
        "out": out,
        "since": "24h",
        "template": TEMPLATE,
        "tracking_uri": world["tracking_uri"],
        "registered_model": REGISTERED,
        "master": "local[2]",
        **overrides,
    }
    return RetrainSettings(**values)


@pytest.fixture(scope="module")
def first(spark: object, world: dict[str, Any]) -> Any:
    """Retrain against the registered champion."""
    return run_retrain(_settings(world, world["champion_dir"], world["work"] / "bundle-next"))


def _fresh_holdout(world: dict[str, Any], device_id: str) -> pd.DataFrame:
    lake = pd.read_parquet(world["lake"])
    rows = lake[(lake["device_id"] == device_id) & (lake["source_module"] == "inference") & lake["label"].notna()]
    rows = rows.sort_values("ts")
    return rows.tail(int(np.ceil(0.25 * len(rows))))


def served_prediction(reader: BundleReader, device_id: str, x: np.ndarray) -> np.ndarray:
    """Predict as the edge serves the device: its own model, the fleet model, or the fleet model plus its correction."""
    return reader.predict(device_id, x)[0]  # the reader routes by the entry's kind, as the edge does


def test_drifted_devices_are_picked_and_their_challengers_beat_the_champion_on_fresh_data(first, world):
    decisions = first.decisions.set_index("device_id")
    champion = BundleReader(world["champion_dir"], runtime="joblib")
    merged = BundleReader(first.bundle_dir, runtime="joblib")
    for device_id in DRIFTED:
        row = decisions.loc[device_id]
        assert "drift" in row["reasons"].split(","), row["detail"]
        assert row["kept"] == "challenger" and row["challenger_mse"] < 0.2 * row["champion_mse"]
        assert row["live_mse"] > 2.0 * row["reference_mse"]
        # Checked outside the job: the newest quarter of the device's fresh rows, both bundles.
        holdout = _fresh_holdout(world, device_id)
        x, y = holdout[list(FEATURES)].to_numpy(), holdout["label"].to_numpy()
        before = np.mean((served_prediction(champion, device_id, x) - y) ** 2)
        after = np.mean((served_prediction(merged, device_id, x) - y) ** 2)
        assert after < 0.2 * before
        old, new = world["champion"].devices[device_id], first.manifest.devices[device_id]
        assert new != old and new.status == "trained"


def test_devices_without_drift_or_fresh_rows_keep_byte_identical_models(first, world):
    decisions = first.decisions.set_index("device_id")
    champion = world["champion"]
    steady = [d for d in KNOWN if d not in DRIFTED]
    for device_id in steady:
        assert pd.isna(decisions.loc[device_id, "reasons"]), decisions.loc[device_id, "detail"]
        assert decisions.loc[device_id, "kept"] == "champion"
        assert first.manifest.devices[device_id] == champion.devices[device_id]  # same files, sha256, metrics
    # --since 24h: the device that drifted 30 h ago has no fresh rows, so it is not picked.
    assert decisions.loc[DRIFTED_LONG_AGO, "n_fresh"] == 0
    assert first.manifest.fleet == champion.fleet
    assert first.manifest.feature_stats == champion.feature_stats
    assert verify_bundle(first.bundle_dir) == []
    assert first.bundle_version != champion.bundle_version


def test_readings_are_deduplicated_unlabelled_rows_ignored_and_edge_error_reported(first):
    decisions = first.decisions.set_index("device_id")
    assert decisions.loc["dev-00000", "n_fresh"] == FRESH_ROWS  # inference + opt-in raw rows: one reading each
    assert 0.1 < decisions.loc["dev-00000", "edge_mse"] < 0.5
    assert decisions.loc["dev-00002", "n_fresh"] == FRESH_ROWS


def test_new_and_modelless_devices_are_picked_and_failures_keep_the_champion(first, world):
    decisions = first.decisions.set_index("device_id")
    assert decisions.loc[NEW_DEVICE, "reasons"] == "new_device"
    if decisions.loc[NEW_DEVICE, "kept"] == "challenger":
        assert first.manifest.devices[NEW_DEVICE].joblib is not None
    else:
        assert NEW_DEVICE not in first.manifest.devices
    row = decisions.loc[CONSTANT]
    assert (row["reasons"], row["challenger_status"], row["challenger_reason"]) == (
        "skipped",
        "skipped",
        "constant_label",
    )
    assert row["kept"] == "champion"
    assert first.manifest.devices[CONSTANT] == world["champion"].devices[CONSTANT]
    assert first.summary["picked_by_reason"]["drift"] == len(DRIFTED)


def test_improvement_is_registered_and_moves_the_champion_alias(first, world):
    client = MlflowClient(tracking_uri=world["tracking_uri"], registry_uri=world["tracking_uri"])
    assert first.alias_moved and first.summary["fleet_improved"]
    assert first.previous_champion == "1" and first.registered.version == "2"
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == "2"
    run = client.get_run(first.run_id)
    assert run.info.run_name == "edgefleet-retrain"
    assert run.data.metrics["picked_drift"] == len(DRIFTED)
    assert run.data.metrics["devices_improved"] >= len(DRIFTED)
    assert run.data.tags["champion_alias_moved"] == "true"
    assert read_manifest(first.bundle_dir).mlflow_run_id == first.run_id


def test_deployment_manifest_carries_the_new_bundle_version_and_image(first):
    assert first.manifest_path == first.bundle_dir.with_name("bundle-next.deployment.json")
    deployment = load_deployment(first.manifest_path)
    assert deployment.modules["inference"].image == f"edgefleet-inference:{first.bundle_version}"
    assert deployment.modules["sensor"].image == f"edgefleet-sensor:{edgefleet.__version__}"
    assert deployment.desired("inference")["expectedBundleVersion"] == first.bundle_version
    assert deployment.modules["inference"].create_options["HostConfig"]["Memory"] == 536870912
    assert [p for p in validate_deployment(first.manifest_path) if p.severity == "error"] == []
    modules = json.loads(first.manifest_path.read_text())["modulesContent"]["$edgeAgent"]["properties.desired"]
    assert isinstance(modules["modules"]["inference"]["settings"]["createOptions"], str)  # the deployed form


def test_cron_run_without_improvement_keeps_the_alias_and_every_model(first, world, capsys):
    parser = argparse.ArgumentParser(prog="edgefleet")
    register(parser.add_subparsers(dest="command", required=True))
    out = world["work"] / "bundle-next-2"
    args = parser.parse_args(
        [
            "retrain",
            "--lake",
            str(world["lake"]),
            "--bundle",
            str(first.bundle_dir),
            "--since",
            "24h",
            "--out",
            str(out),
            "--template",
            str(TEMPLATE),
            "--tracking-uri",
            world["tracking_uri"],
            "--registered-model",
            REGISTERED,
            "--master",
            "local[2]",
            "--quiet",
            "--json",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(printed.strip().splitlines()[-1])
    assert report["alias_moved"] is False and report["summary"]["improved"] == 0
    assert report["summary"]["picked_by_reason"].get("skipped") == 1  # picked again, still no model
    # The new device's model was built from these very rows: retrained, it ties, and a tie keeps the champion.
    new_device = next(d for d in report["decisions"] if d["device_id"] == NEW_DEVICE)
    assert (new_device["reasons"], new_device["kept"]) == ("new_data", "champion")
    assert new_device["challenger_mse"] == new_device["champion_mse"]
    assert "Retraining" in printed
    second = read_manifest(out)
    assert {d: e.joblib for d, e in second.devices.items()} == {d: e.joblib for d, e in first.manifest.devices.items()}
    client = MlflowClient(tracking_uri=world["tracking_uri"], registry_uri=world["tracking_uri"])
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == "2"
    assert (
        load_deployment(out.with_name("bundle-next-2.deployment.json")).desired("inference")["expectedBundleVersion"]
        == second.bundle_version
    )


def test_prior_history_joins_training_only_when_asked_and_new_data_picks_devices(spark, world, tmp_path):
    outcome = run_retrain(
        _settings(
            world,
            world["champion_dir"],
            tmp_path / "bundle",
            prior_history=world["history"],
            new_data_factor=0.5,  # 160 fresh rows >= 0.5 x 240 rows each model was built from
            tracking="off",
        )
    )
    decisions = outcome.decisions.set_index("device_id")
    steady = decisions.loc["dev-00000"]
    assert "new_data" in steady["reasons"].split(",")
    # 160 fresh rows less 40 held out, plus 240 prior rows; train_device keeps 80% of them for fitting.
    assert steady["challenger_n_train"] == 288
    assert decisions.loc[NEW_DEVICE, "challenger_n_train"] == 96  # no prior history: the 120 fresh rows only
    for row in decisions[decisions["kept"] == "challenger"].itertuples():
        assert row.challenger_mse < row.champion_mse
    assert outcome.registered is None and not outcome.alias_moved
    assert verify_bundle(outcome.bundle_dir) == []


def test_user_mistakes_fail_with_clear_messages(spark, world, tmp_path):
    with pytest.raises(BundleError, match="not found"):
        run_retrain(_settings(world, tmp_path / "no-bundle", tmp_path / "out", tracking="off"))
    with pytest.raises(HistoryError, match="not found"):
        run_retrain(_settings(world, world["champion_dir"], tmp_path / "out", lake=tmp_path / "no-lake"))
    with pytest.raises(EdgefleetError, match="no readings since"):
        run_retrain(_settings(world, world["champion_dir"], tmp_path / "out", since="2099-01-01T00:00:00Z"))
    unlabelled = lake_rows("dev-00000", 40, NOW, False, np.random.default_rng(1)).assign(label=np.nan)
    append_to_lake(tmp_path / "lake", unlabelled)
    with pytest.raises(EdgefleetError, match="none with a label"):
        run_retrain(_settings(world, world["champion_dir"], tmp_path / "out", lake=tmp_path / "lake", tracking="off"))
    assert not (tmp_path / "out").exists()
