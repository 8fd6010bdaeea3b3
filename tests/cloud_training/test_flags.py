"""The flags the training and retraining jobs share become the same settings in both."""

from __future__ import annotations

import pytest

from cloud_training.__main__ import build_parser
from cloud_training.cli import retrain_settings, train_settings

pytestmark = pytest.mark.fast

SHARED = [
    "--families", "ridge, random_forest",
    "--min-rows", "40",
    "--fleet-margin", "0.1",
    "--max-model-kb", "50",
    "--max-predict-us", "900",
    "--no-onnx",
    "--seed", "3",
    "--master", "local[2]",
    "--tracking", "off",
    "--tracking-uri", "sqlite:///other.db",
    "--experiment", "exp",
    "--registered-model", "fleet-x",
]  # fmt: skip
KNOBS = {
    "families": ("ridge", "random_forest"),
    "min_rows": 40,
    "fleet_margin": 0.1,
    "max_model_bytes": 50_000,
    "max_predict_us": 900.0,
    "onnx": False,
    "seed": 3,
    "master": "local[2]",
    "tracking": "off",
    "tracking_uri": "sqlite:///other.db",
    "experiment": "exp",
    "registered_model": "fleet-x",
}


def test_train_and_retrain_map_the_shared_flags_to_the_same_settings(monkeypatch):
    monkeypatch.delenv("SPARK_MASTER", raising=False)
    parser = build_parser()
    train = train_settings(parser.parse_args(["train", "--history", "h.parquet", *SHARED]))
    retrain = retrain_settings(parser.parse_args(["retrain", "--lake", "lake", "--bundle", "bundle", *SHARED]))
    assert {k: getattr(train, k) for k in KNOBS} == KNOBS
    assert {k: getattr(retrain, k) for k in KNOBS} == KNOBS


def test_unset_flags_leave_the_environment_and_defaults_in_charge(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "spark://cluster:7077")
    parser = build_parser()
    train = train_settings(parser.parse_args(["train", "--history", "h.parquet"]))
    retrain = retrain_settings(parser.parse_args(["retrain", "--lake", "lake", "--bundle", "bundle"]))
    assert train.master == retrain.master == "spark://cluster:7077"
    assert (train.onnx, train.min_rows, retrain.min_rows, retrain.drift_factor) == (True, 30, 30, 2.0)


def test_only_training_offers_nested_tracking(capsys):
    parser = build_parser()
    assert parser.parse_args(["train", "--history", "h", "--tracking", "nested"]).tracking == "nested"
    with pytest.raises(SystemExit):
        parser.parse_args(["retrain", "--lake", "l", "--bundle", "b", "--tracking", "nested"])
    assert "invalid choice: 'nested'" in capsys.readouterr().err


def test_train_runs_where_auto_chooses_unless_the_flag_or_environment_says_otherwise(monkeypatch):
    parser = build_parser()
    assert train_settings(parser.parse_args(["train", "--history", "h"])).execution == "auto"
    monkeypatch.setenv("EDGEFLEET_EXECUTION", "local")
    assert train_settings(parser.parse_args(["train", "--history", "h"])).execution == "local"
    assert train_settings(parser.parse_args(["train", "--history", "h", "--execution", "spark"])).execution == "spark"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--history", "h", "--execution", "cluster"])
