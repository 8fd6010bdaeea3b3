"""Batch scoring on Spark: a grouped-map UDF that loads each device's model once per group."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cloud_training.predict import predict_frame
from cloud_training.shipping import open_shipped, ship_bundle
from edgefleet.bundle import read_manifest
from edgefleet.history import DEVICE_COLUMN

SCORE_COLUMNS = "prediction double, prediction_model string, prediction_fallback_reason string"


def score_with_bundle(spark: SparkSession, df: DataFrame, bundle_dir: Path) -> DataFrame:
    """Return `df` with prediction columns, each device group scored by its own model.

    The bundle travels inside the job (`cloud_training.shipping`): executors need no access to `bundle_dir`.
    """
    manifest = read_manifest(bundle_dir)  # fail on the driver, with a clear message, not in a task
    shipped, model_files = ship_bundle(spark, bundle_dir)
    input_schema = df.schema
    output_ddl = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in input_schema.fields)

    def score_device_udf(pdf: pd.DataFrame, files: pd.DataFrame) -> pd.DataFrame:
        if pdf.empty:  # a bundle device without rows to score
            return pd.DataFrame()
        scored = predict_frame(open_shipped(shipped, files), pdf)
        pdf = pdf.copy()
        pdf["prediction"] = scored["value"].to_numpy()
        pdf["prediction_model"] = scored["model"].to_numpy()
        pdf["prediction_fallback_reason"] = scored["fallback_reason"].to_numpy()
        return pdf

    missing = [f for f in manifest.features if f not in df.columns]
    for name in missing:  # absent features are scored by the fleet model with filled values
        df = df.withColumn(name, F.lit(None).cast("double"))
        output_ddl += f", `{name}` double"
    grouped = df.groupBy(DEVICE_COLUMN).cogroup(model_files.groupBy(DEVICE_COLUMN))
    return grouped.applyInPandas(score_device_udf, schema=f"{output_ddl}, {SCORE_COLUMNS}")


def score_with_pyfunc(spark: SparkSession, df: DataFrame, model_uri: str, features: tuple[str, ...]) -> DataFrame:
    """Return `df` with a `prediction` column from the registered bundle via `mlflow.pyfunc.spark_udf`."""
    import mlflow.pyfunc

    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type="double", env_manager="local")
    return df.withColumn("prediction", udf(F.struct(DEVICE_COLUMN, *features)))
