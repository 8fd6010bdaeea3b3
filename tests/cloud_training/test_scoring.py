"""Batch scoring: the grouped-map UDF, the registered pyfunc on Spark, and direct calls agree."""

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd

from cloud_training.scoring import score_with_bundle, score_with_pyfunc
from cloud_training.spark_job import read_history_spark
from edgefleet.bundle import BundleReader
from edgefleet.history import write_history
from simulator.history import HistorySpec, generate_history


def test_pyfunc_spark_udf_and_direct_predictions_agree(spark, trained, tmp_path):
    # Known devices, an unknown one, and a row with a missing feature.
    frame = generate_history(HistorySpec(n_devices=3, rows_per_device=40, seed=3))
    stranger = frame[frame["device_id"] == "dev-00000"].assign(device_id="never-trained")
    frame = pd.concat([frame, stranger], ignore_index=True)
    frame.loc[5, "humidity_pct"] = np.nan
    df, features = read_history_spark(spark, write_history(frame, tmp_path / "s.parquet"), trained.manifest.features)

    reader = BundleReader(trained.bundle_dir, runtime="joblib")
    direct = {}
    for device_id, group in frame.groupby("device_id"):
        values, _ = reader.predict(str(device_id), group[list(features)].to_numpy())
        direct.update(zip(zip(group["device_id"], group["ts"], strict=True), values, strict=True))

    by_udf = score_with_bundle(spark, df, trained.bundle_dir).toPandas()
    mlflow.set_tracking_uri(trained.tracking_uri)  # other tests may have pointed MLflow elsewhere
    mlflow.set_registry_uri(trained.tracking_uri)
    model_uri = "models:/fleet-under-test@champion"
    by_spark_pyfunc = score_with_pyfunc(spark, df, model_uri, features).toPandas()
    by_pyfunc = mlflow.pyfunc.load_model(model_uri).predict(frame[["device_id", *features]])

    expected = [direct[(d, pd.Timestamp(t, tz="UTC"))] for d, t in zip(by_udf["device_id"], by_udf["ts"], strict=True)]
    np.testing.assert_allclose(by_udf["prediction"], expected, rtol=1e-9)
    expected = [
        direct[(d, pd.Timestamp(t, tz="UTC"))]
        for d, t in zip(by_spark_pyfunc["device_id"], by_spark_pyfunc["ts"], strict=True)
    ]
    np.testing.assert_allclose(by_spark_pyfunc["prediction"], expected, rtol=1e-9)
    expected = [direct[(d, t)] for d, t in zip(frame["device_id"], frame["ts"], strict=True)]
    np.testing.assert_allclose(by_pyfunc, expected, rtol=1e-9)

    models = by_udf.set_index("device_id")
    assert set(models.loc["never-trained", "prediction_fallback_reason"]) == {"no_model"}
    assert set(models.loc["dev-00001", "prediction_model"]) == {"device"}
    assert (by_udf["prediction_fallback_reason"] == "missing_features").sum() == 1
