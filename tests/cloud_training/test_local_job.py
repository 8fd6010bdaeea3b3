"""The in-process path against real local Spark: the same frame read, the same bundle, the same predictions."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cloud_training.local_job import read_history_local
from cloud_training.pipeline import run_training
from cloud_training.predict import predict_frame
from cloud_training.settings import TrainSettings
from cloud_training.spark_job import read_history_spark
from edgefleet.bundle import BundleReader, read_manifest, verify_bundle
from edgefleet.history import write_history
from edgefleet.lake import append_to_lake
from simulator.history import HistorySpec, generate_history
from tests.conftest import fleet_history


def spark_frame(spark, path: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    df, features = read_history_spark(spark, path, None)
    frame = df.toPandas().sort_values(["device_id", "ts"], ignore_index=True)
    frame["ts"] = pd.to_datetime(frame["ts"]).dt.tz_localize("UTC")  # Spark hands over naive UTC times
    return frame, features


def local_frame(path: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    frame, features = read_history_local(path, None)
    return frame.sort_values(["device_id", "ts"], ignore_index=True), features


def test_the_local_reader_gives_the_frame_spark_reads_from_parquet(spark, tmp_path):
    frame = generate_history(HistorySpec(n_devices=3, rows_per_device=40, seed=4))
    odd = frame.assign(
        flag=True,  # a boolean is no NumericType to Spark: never a feature
        note="x",
        count=np.arange(len(frame), dtype="int32"),
        device_id=frame["device_id"].where(frame.index % 17 != 0, None),  # rows without a device are dropped
    )
    # Epoch milliseconds instead of timestamps, and the feature order of the file, not of the name.
    odd = odd.assign(ts=(odd["ts"].astype("int64") // 1_000_000))[["device_id", "ts", "count", *frame.columns[2:]]]
    odd.to_parquet(tmp_path / "h.parquet", index=False)
    ours, theirs = local_frame(tmp_path / "h.parquet"), spark_frame(spark, tmp_path / "h.parquet")
    assert ours[1] == theirs[1] and ours[1][0] == "count" and "flag" not in ours[1]
    pd.testing.assert_frame_equal(ours[0], theirs[0], check_dtype=False)
    assert len(ours[0]) == odd["device_id"].notna().sum()


def test_the_local_reader_gives_the_frame_spark_reads_from_the_lake(spark, tmp_path):
    frame = generate_history(HistorySpec(n_devices=3, rows_per_device=120, seed=6, interval_s=900))
    append_to_lake(tmp_path / "lake", frame.assign(seq=range(len(frame)), prediction_value=0.0))
    ours, theirs = local_frame(tmp_path / "lake"), spark_frame(spark, tmp_path / "lake")
    assert ours[1] == theirs[1] == ("temperature_c", "humidity_pct", "vibration_mm_s", "load_pct")
    pd.testing.assert_frame_equal(ours[0], theirs[0], check_dtype=False)


@pytest.fixture(scope="module")
def both_paths(spark, tmp_path_factory):
    """Train one history twice, forced in-process (2 worker processes) and forced onto Spark."""
    work = tmp_path_factory.mktemp("paths")
    history = write_history(fleet_history(10, 200, seed=7), work / "history.parquet")
    outcomes = {}
    for execution in ("local", "spark"):
        outcomes[execution] = run_training(
            TrainSettings(
                history=history,
                out=work / f"bundle-{execution}",
                tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                registered_model=f"paths-{execution}",
                master="local[2]",
                execution=execution,
                plots=False,
            )
        )
    return history, outcomes


def test_in_process_and_spark_give_the_same_kinds_statuses_and_predictions(both_paths):
    history, outcomes = both_paths
    local, spark = outcomes["local"], outcomes["spark"]
    assert (local.execution.chosen, spark.execution.chosen) == ("in_process", "spark")
    columns = ["device_id", "status", "reason", "kind", "family"]
    pd.testing.assert_frame_equal(local.results[columns], spark.results[columns])
    assert local.manifest.fleet.family == spark.manifest.fleet.family
    assert verify_bundle(local.bundle_dir) == [] and verify_bundle(spark.bundle_dir) == []
    rows = pd.read_parquet(history)
    rows = rows[np.isfinite(rows[list(local.manifest.features)]).all(axis=1)]
    predicted = {name: predict_frame(BundleReader(o.bundle_dir), rows) for name, o in outcomes.items()}
    assert predicted["local"]["model"].eq("device").any()
    pd.testing.assert_frame_equal(predicted["local"], predicted["spark"])


def test_both_paths_record_the_choice_in_the_summary_and_the_mlflow_run(both_paths):
    _, outcomes = both_paths
    for name, outcome in outcomes.items():
        record = outcome.summary["execution"]
        assert (record["requested"], record["chosen"]) == (name, "in_process" if name == "local" else "spark")
        client = MlflowClient(tracking_uri=outcome.tracking_uri)
        params = client.get_run(outcome.run_id).data.params
        assert (params["execution"], params["execution_chosen"]) == (name, record["chosen"])
        assert params["execution_reason"] == record["reason"]
        assert read_manifest(outcome.bundle_dir).mlflow_run_id == outcome.run_id
        assert outcome.registered is not None and outcome.registered.champion
