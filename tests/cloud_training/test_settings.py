"""Settings of `edgefleet train` and `edgefleet retrain`: environment, shared knobs, and what they refuse."""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import ValidationError

from cloud_training.settings import RetrainSettings, TrainSettings, parse_since
from edgefleet.bundle import read_manifest
from edgefleet.errors import EdgefleetError

pytestmark = pytest.mark.fast


def test_spark_master_and_mlflow_uri_come_from_their_usual_environment_variables(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "spark://cluster:7077")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    settings = TrainSettings(history="h.parquet")
    assert (settings.master, settings.tracking_uri) == ("spark://cluster:7077", "http://mlflow:5000")


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "spark://cluster:7077")
    assert TrainSettings(history="h.parquet", master="local[2]").master == "local[2]"


def test_defaults_are_local_spark_and_a_sqlite_store_in_the_working_dir(monkeypatch):
    monkeypatch.delenv("SPARK_MASTER", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = TrainSettings(history="h.parquet")
    assert (settings.master, settings.tracking_uri, settings.tracking) == (
        "local[*]",
        "sqlite:///mlflow.db",
        "scalable",
    )


def test_unknown_settings_are_rejected_not_ignored():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TrainSettings(history="h.parquet", famlies=("ridge",))


def test_train_and_retrain_read_a_shared_knob_from_the_same_environment_variable(monkeypatch):
    monkeypatch.setenv("EDGEFLEET_MIN_ROWS", "40")
    monkeypatch.setenv("EDGEFLEET_FAMILIES", '["ridge"]')
    train = TrainSettings(history="h.parquet")
    retrain = RetrainSettings(lake="lake", bundle="bundle")
    assert (train.min_rows, train.families) == (retrain.min_rows, retrain.families) == (40, ("ridge",))


def test_a_knob_out_of_range_is_refused_before_any_job_starts():
    with pytest.raises(ValidationError, match="holdout_fraction"):
        TrainSettings(history="h.parquet", holdout_fraction=0.95)
    with pytest.raises(ValidationError, match="min_rows"):
        RetrainSettings(lake="lake", bundle="bundle", min_rows=2)
    with pytest.raises(ValidationError, match="use some of: ridge, random_forest, gradient_boosting"):
        RetrainSettings(lake="lake", bundle="bundle", families=("xgboost",))


def test_the_knobs_reach_the_per_device_function_unchanged():
    settings = TrainSettings(history="h.parquet", families=("ridge",), min_rows=50, max_model_bytes=9_000, onnx=False)
    config = settings.training_config(("a", "b"), reference_ts_s=1.0)
    assert (config.families, config.min_rows, config.onnx, config.budget.max_model_bytes) == (
        ("ridge",),
        50,
        False,
        9_000,
    )
    assert (config.fleet_rows_per_device, config.reference_ts_s) == (settings.fleet_rows_per_device, 1.0)


def test_retraining_keeps_the_champions_fleet_model_and_takes_its_features_and_thresholds(small_bundle):
    settings = RetrainSettings(lake="lake", bundle="bundle", drift_factor=3.0, min_rows=50, prior_history="h.parquet")
    champion = read_manifest(small_bundle)
    policy = settings.policy(champion)
    assert (policy.bundle_version, policy.drift_factor, policy.use_history) == (champion.bundle_version, 3.0, True)
    training = policy.training
    assert (training.features, training.min_rows, training.fleet_rows_per_device) == (champion.features, 50, 0)


def test_retraining_refuses_nested_tracking_and_outputs_that_would_overwrite_the_champion(tmp_path):
    with pytest.raises(ValidationError, match="tracking"):
        RetrainSettings(lake="lake", bundle="bundle", tracking="nested")
    with pytest.raises(ValidationError, match="new directory"):
        RetrainSettings(lake="lake", bundle=tmp_path / "bundle", out=tmp_path / "bundle")
    with pytest.raises(ValidationError, match="duration"):
        RetrainSettings(lake="lake", bundle="bundle", out=tmp_path / "out", since="yesterday")
    with pytest.raises(ValidationError, match="inside the bundle"):
        RetrainSettings(lake="lake", bundle="bundle", out=tmp_path / "out", out_manifest=tmp_path / "out" / "d.json")


def test_since_takes_durations_and_iso_times():
    now = pd.Timestamp("2026-11-21T08:00:00Z").to_pydatetime()
    assert parse_since("24h", now) == pd.Timestamp("2026-11-20T08:00:00Z")
    assert parse_since("90m", now) == pd.Timestamp("2026-11-21T06:30:00Z")
    assert parse_since("7d", now) == pd.Timestamp("2026-11-14T08:00:00Z")
    assert parse_since("2026-11-20T06:00:00Z", now) == pd.Timestamp("2026-11-20T06:00:00Z")
    assert parse_since("2026-11-20T06:00:00", now) == pd.Timestamp("2026-11-20T06:00:00Z")
    with pytest.raises(EdgefleetError, match="duration"):
        parse_since("last tuesday", now)
