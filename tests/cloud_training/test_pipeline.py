"""Real local Spark and a real MLflow sqlite store and registry."""

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from cloud_training.gateway import unpack_bundle
from cloud_training.pipeline import run_training
from cloud_training.settings import TrainSettings
from cloud_training.strategy import STRATEGIES
from edgefleet.bundle import read_manifest, verify_bundle
from edgefleet.feature_reference import FeatureReference
from edgefleet.history import write_history
from edgefleet.lake import append_to_lake
from simulator.history import HistorySpec, generate_history
from tests.conftest import BAD_DEVICES


def test_per_device_models_beat_the_fleet_model_on_generated_data(trained):
    results = trained.results.set_index("device_id")
    healthy = results.drop(index=list(BAD_DEVICES))
    assert (healthy["status"] == "trained").mean() >= 0.9
    assert (healthy["mse"] < healthy["fleet_mse"]).mean() >= 0.9
    assert healthy["mse"].median() < 0.2 * healthy["fleet_mse"].median()
    # Against the chosen fleet model, on the same final rows: the deployed choice is no worse than either alone.
    comparison = trained.summary["comparison"]
    assert comparison["rows"] == int(healthy["n_holdout"].sum())
    assert comparison["deployed_mse"] <= 1.05 * min(comparison["fleet_mse"], comparison["device_mse"])
    assert trained.summary["device_beats_fleet"] == int((healthy["device_mse"] < healthy["fleet_mse"]).sum())


def test_the_spark_path_gives_the_same_choices_as_the_local_path(trained):
    from cloud_training.device_training import TrainingConfig
    from cloud_training.fleet import train_fleet_locally
    from tests.conftest import fleet_history

    history = fleet_history(24, 300)
    settings = TrainSettings(history=Path("unused"), tracking="off")
    config = settings.training_config(trained.manifest.features)
    assert isinstance(config, TrainingConfig)
    local, fleet = train_fleet_locally((g for _, g in history.groupby("device_id")), config, settings.fleet_max_rows)
    assert fleet.family == trained.manifest.fleet.family
    spark = trained.results.set_index("device_id").sort_index()
    local = local.set_index("device_id").sort_index()
    pd.testing.assert_series_equal(spark["kind"], local["kind"])
    pd.testing.assert_series_equal(spark["mse"], local["mse"], rtol=1e-9)


def test_bad_devices_are_isolated_with_reasons_while_the_rest_train(trained):
    results = trained.results.set_index("device_id")
    for device_id, (_, reason) in BAD_DEVICES.items():
        assert results.loc[device_id, "reason"] == reason, device_id
        assert results.loc[device_id, "status"] in ("skipped", "failed")
    assert len(results) == 24 + len(BAD_DEVICES)
    assert trained.summary["counts"]["trained"] + trained.summary["counts"]["fallback"] == 24


def test_bundle_verifies_and_records_every_device_with_status_and_metrics(trained):
    assert verify_bundle(trained.bundle_dir) == []
    manifest = read_manifest(trained.bundle_dir)
    assert set(manifest.devices) == set(trained.results["device_id"])
    model = next(entry for entry in manifest.devices.values() if entry.kind == "device")
    assert model.status == "trained" and model.joblib.size_bytes <= 100_000 and model.onnx is not None
    assert model.holdout.n == model.n_holdout > 0 and model.fleet_holdout is not None
    for entry in manifest.devices.values():  # every device says what serves it
        assert entry.kind == ("fleet" if entry.status != "trained" else entry.kind)
        assert (entry.correction is not None) == (entry.kind == "fleet_corrected")
    assert manifest.devices["bad-stale"].status == "skipped" and manifest.devices["bad-stale"].joblib is None
    assert manifest.mlflow_run_id == trained.run_id
    assert {"scikit-learn", "joblib", "onnxruntime"} <= set(manifest.libraries)


def test_bundle_carries_each_devices_feature_distribution_through_spark(trained):
    manifest = read_manifest(trained.bundle_dir)
    reference = manifest.devices["dev-00000"].feature_reference
    assert reference is not None and set(reference) == set(manifest.features)
    parsed = [FeatureReference.from_text(text) for text in reference.values()]
    assert all(r.bins == len(r.edges) + 1 == 10 for r in parsed)
    assert manifest.devices["bad-stale"].feature_reference is None  # skipped as stale: old data describes nothing


def test_mlflow_parent_run_holds_aggregates_results_table_plots_and_bundle(trained):
    client = MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.metrics["devices_trained"] + run.data.metrics["devices_fallback"] == 24
    assert "holdout_mse_p50" in run.data.metrics and "train_s" in run.data.metrics
    comparison = trained.summary["comparison"]
    for name in ("deployed_mse", "fleet_mse", "device_mse", "corrected_mse"):
        assert run.data.metrics[f"final_{name}"] == comparison[name]
    assert run.data.metrics["final_rows"] == comparison["rows"]
    strategy = trained.summary["strategy"]  # the fleet-wide check: which strategy won, and by what
    assert sum(run.data.metrics[f"check_chose_{name}"] for name in STRATEGIES) == 1.0
    assert run.data.metrics[f"check_chose_{strategy['strategy']}"] == 1.0
    assert run.data.metrics["check_fleet_mse"] == strategy["fleet_mse"]
    top = {a.path for a in client.list_artifacts(trained.run_id)}
    assert {"results", "plots", "bundle"} <= top
    table = mlflow.artifacts.download_artifacts(
        run_id=trained.run_id, artifact_path="results", tracking_uri=trained.tracking_uri
    )
    results = pd.read_parquet(next(Path(table).glob("*.parquet")))
    assert set(results["device_id"]) == set(trained.results["device_id"])
    archive = mlflow.artifacts.download_artifacts(
        run_id=trained.run_id, artifact_path="bundle/bundle.tar", tracking_uri=trained.tracking_uri
    )
    logged = unpack_bundle(Path(archive))
    assert verify_bundle(logged) == []
    assert read_manifest(logged).bundle_version == trained.manifest.bundle_version
    plots = {a.path for a in client.list_artifacts(trained.run_id, "plots")}
    assert plots == {"plots/holdout_error.png", "plots/device_vs_fleet.png"}
    child_runs = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{trained.run_id}'"
    )
    assert child_runs == []  # scalable mode: no per-device runs


def test_first_registration_sets_champion_and_a_later_one_does_not_move_it(trained, tmp_path):
    client = MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri)
    assert trained.registered.champion
    assert str(client.get_model_version_by_alias("fleet-under-test", "champion").version) == "1"
    history = write_history(
        generate_history(HistorySpec(n_devices=6, rows_per_device=120, seed=5)), tmp_path / "h.parquet"
    )
    again = run_training(
        TrainSettings(
            history=history,
            out=tmp_path / "bundle",
            tracking_uri=trained.tracking_uri,
            registered_model="fleet-under-test",
            plots=False,
        )
    )
    assert (again.registered.version, again.registered.champion) == ("2", False)
    assert str(client.get_model_version_by_alias("fleet-under-test", "champion").version) == "1"


def test_nested_tracking_creates_one_child_run_per_device(spark, tmp_path):
    frame = generate_history(HistorySpec(n_devices=5, rows_per_device=120, seed=8, bad_fraction=0.0))
    outcome = run_training(
        TrainSettings(
            history=write_history(frame, tmp_path / "h.parquet"),
            out=tmp_path / "bundle",
            tracking="nested",
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            registered_model="nested-under-test",
            plots=False,
        )
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_run(outcome.run_id).info.experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{outcome.run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(frame["device_id"].unique())
    manifest = read_manifest(outcome.bundle_dir)
    assert {e.mlflow_run_id for e in manifest.devices.values()} == {r.info.run_id for r in children}


def test_training_reads_the_telemetry_lake(spark, tmp_path):
    frame = generate_history(HistorySpec(n_devices=4, rows_per_device=200, seed=6, interval_s=900))
    append_to_lake(tmp_path / "lake", frame.assign(seq=range(len(frame)), prediction_value=0.0))
    outcome = run_training(
        TrainSettings(history=tmp_path / "lake", out=tmp_path / "bundle", tracking="off", plots=False)
    )
    assert set(outcome.results["status"]) == {"trained"}
    assert read_manifest(outcome.bundle_dir).features == ("temperature_c", "humidity_pct", "vibration_mm_s", "load_pct")


def test_spark_reads_csv_and_json_lines_with_string_timestamps_like_parquet(spark, tmp_path):
    from cloud_training.spark_job import read_history_spark

    frame = generate_history(HistorySpec(n_devices=3, rows_per_device=25, seed=4))
    text = frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    text.to_csv(tmp_path / "h.csv", index=False)
    text.to_json(tmp_path / "h.jsonl", orient="records", lines=True)
    write_history(frame, tmp_path / "h.parquet")
    loaded = {}
    for name in ("h.parquet", "h.csv", "h.jsonl"):
        df, features = read_history_spark(spark, tmp_path / name, None)
        loaded[name] = df.orderBy("device_id", "ts").toPandas()
        # Spark's JSON reader orders inferred columns by name; parquet and CSV keep the file's order.
        assert sorted(features) == sorted(("temperature_c", "humidity_pct", "vibration_mm_s", "load_pct"))
    for name in ("h.csv", "h.jsonl"):
        same_order = loaded[name][loaded["h.parquet"].columns]
        pd.testing.assert_frame_equal(same_order, loaded["h.parquet"], check_exact=False)
