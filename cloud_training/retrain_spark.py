"""Spark wiring of retraining: read the lake, pick the rows, run `retrain_device` once per device.

One pass over the lake's fresh rows (`ts >= cutoff`), `groupBy("device_id").applyInPandas`;
each Python worker opens the champion bundle once and loads each device's models from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cloud_training.device_training import DeviceResult
from cloud_training.retrain_policy import (
    FRESH_COLUMN,
    RETRAIN_DDL,
    Champion,
    RetrainDecision,
    RetrainPolicy,
    decision_frame,
    retrain_device,
)
from cloud_training.shipping import ShippedBundle, open_shipped, ship_bundle
from cloud_training.spark_job import limit_native_threads, read_history_spark, timestamp_column
from edgefleet.bundle import BundleReader, Route
from edgefleet.errors import EdgefleetError, HistoryError
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN, check_columns, history_format
from edgefleet.lake import (
    DATE_COLUMN,
    PREDICTION_VALUE_COLUMN,
    PREDICTION_VERSION_COLUMN,
    SEQ_COLUMN,
    SOURCE_COLUMN,
)

__all__ = [
    "champion_for",
    "empty_lake_error",
    "labelled",
    "make_retrain_udf",
    "read_lake_spark",
    "retrain_all_devices",
    "since_cutoff",
    "spark_error_text",
    "with_prior_history",
]

logger = logging.getLogger(__name__)


def champion_for(reader: BundleReader, device_id: str) -> Champion:
    """Return the champion bundle's entry and serving models for one device (sha256-checked on load)."""
    fleet = reader.model(Route("fleet", None, "no_model"))
    entry = reader.manifest.devices.get(device_id)
    route = reader.route(device_id)  # by the entry's kind: a fleet_corrected route serves fleet + correction
    served = fleet if route.kind == "fleet" or route.device_id is None else reader.model(route)
    return Champion(entry=entry, served=served, fleet=fleet)


def make_retrain_udf(
    policy: RetrainPolicy, shipped: ShippedBundle
) -> Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]:
    """Return the cogrouped function that retrains one device per call: its rows, and its champion's model files."""

    def retrain_device_udf(pdf: pd.DataFrame, files: pd.DataFrame) -> pd.DataFrame:
        if pdf.empty:  # a champion device without fresh rows: nothing to decide here
            return pd.DataFrame()
        limit_native_threads()
        device_id = str(pdf[DEVICE_COLUMN].iloc[0])
        try:
            champion = champion_for(open_shipped(shipped, files), device_id)
        except Exception as err:  # an unreadable champion model keeps the champion entry as it is
            logger.warning("device %s: cannot load the champion's model: %s", device_id, err)
            failed = DeviceResult.failed(device_id, "champion_unreadable", f"{type(err).__name__}: {err}")
            return decision_frame(failed, RetrainDecision(decision=f"champion model unreadable: {err}"[:2000]))
        return decision_frame(*retrain_device(pdf, policy, champion))

    return retrain_device_udf


def read_lake_spark(spark: SparkSession, lake: Path, features: tuple[str, ...]) -> DataFrame:
    """Read the telemetry lake into typed columns, with the bookkeeping columns retraining uses."""
    if history_format(lake) not in ("lake", "parquet"):
        raise HistoryError(f"--lake {lake} is not a telemetry lake (<lake>/date=YYYY-MM-DD/part-*.parquet)")
    try:
        # Files from different writers may lack the prediction columns: merge their schemas.
        df = spark.read.option("mergeSchema", "true").parquet(str(lake))
    except Exception as err:  # Spark's AnalysisException and Py4J errors carry the cause in the text
        raise HistoryError(f"Cannot read the lake {lake}: {spark_error_text(err)}") from err
    check_columns(df.columns, features)

    def optional(name: str, spark_type: str) -> Column:
        column = F.col(name) if name in df.columns else F.lit(None)
        return column.cast(spark_type).alias(name)

    return df.select(
        F.col(DEVICE_COLUMN).cast("string").alias(DEVICE_COLUMN),
        timestamp_column(df.schema[TS_COLUMN].dataType).alias(TS_COLUMN),
        optional(SEQ_COLUMN, "bigint"),
        *(F.col(c).cast("double").alias(c) for c in features),
        F.col(LABEL_COLUMN).cast("double").alias(LABEL_COLUMN),
        optional(PREDICTION_VALUE_COLUMN, "double"),
        optional(PREDICTION_VERSION_COLUMN, "string"),
        optional(SOURCE_COLUMN, "string"),
        F.lit(True).alias(FRESH_COLUMN),
        *([F.col(DATE_COLUMN)] if DATE_COLUMN in df.columns else []),
    ).where(F.col(DEVICE_COLUMN).isNotNull())


def spark_error_text(err: Exception) -> str:
    """Return the JVM exception messages inside a Spark/Py4J error, without the stack trace."""
    lines = str(err).splitlines()
    causes = [line.split("Exception: ", 1)[1] for line in lines if "Exception: " in line]
    unique = list(dict.fromkeys(causes))[:2]
    return "; ".join(unique) if unique else lines[0] if lines else type(err).__name__


def since_cutoff(df: DataFrame, cutoff: datetime) -> DataFrame:
    """Keep the rows at or after `cutoff`."""
    if DATE_COLUMN in df.columns:
        # The lake's UTC-day partitions: Spark skips older days' files instead of opening each one.
        df = df.where(F.col(DATE_COLUMN) >= F.lit(cutoff.astimezone(UTC).date()))
    return df.where(F.col(TS_COLUMN) >= F.timestamp_seconds(F.lit(cutoff.timestamp())))


def labelled(df: DataFrame) -> DataFrame:
    """Keep the rows with ground truth: a NaN or null label is unusable for training and scoring."""
    return df.where(F.col(LABEL_COLUMN).isNotNull() & ~F.isnan(F.col(LABEL_COLUMN)))


def with_prior_history(spark: SparkSession, fresh: DataFrame, history: Path, features: tuple[str, ...]) -> DataFrame:
    """Add prior history rows (marked not fresh) of the devices that have fresh rows."""
    prior, _ = read_history_spark(spark, history, features)
    devices = fresh.select(DEVICE_COLUMN).distinct()
    prior = prior.join(F.broadcast(devices), DEVICE_COLUMN, "left_semi").select(
        DEVICE_COLUMN,
        TS_COLUMN,
        F.lit(None).cast("bigint").alias(SEQ_COLUMN),
        *features,
        LABEL_COLUMN,
        F.lit(None).cast("double").alias(PREDICTION_VALUE_COLUMN),
        F.lit(None).cast("string").alias(PREDICTION_VERSION_COLUMN),
        F.lit(None).cast("string").alias(SOURCE_COLUMN),
        F.lit(False).alias(FRESH_COLUMN),
    )
    return fresh.unionByName(prior, allowMissingColumns=True)


def retrain_all_devices(df: DataFrame, policy: RetrainPolicy, bundle_dir: Path) -> DataFrame:
    """Return the lazy per-device frame: the rows cogrouped by device with the champion's model files."""
    # The champion travels inside the job (`cloud_training.shipping`): executors need no access to `bundle_dir`.
    shipped, model_files = ship_bundle(df.sparkSession, bundle_dir, cache_bytes=64 << 20)
    grouped = df.groupBy(DEVICE_COLUMN).cogroup(model_files.groupBy(DEVICE_COLUMN))
    return grouped.applyInPandas(make_retrain_udf(policy, shipped), schema=RETRAIN_DDL)


def empty_lake_error(lake_rows: DataFrame, lake: Path, cutoff: datetime) -> EdgefleetError:
    """Say why the lake gave no training rows: nothing since the cutoff, or nothing labelled."""
    since = since_cutoff(lake_rows, cutoff)
    row = lake_rows.agg(F.max(TS_COLUMN).alias("newest"), F.count(F.lit(1)).alias("rows")).first()
    newest, n_rows = (row["newest"], row["rows"]) if row is not None else (None, 0)
    if n_rows == 0:
        return EdgefleetError(f"The lake {lake} has no readings; run the edge (or `edgefleet edge`) to fill it")
    if since.limit(1).count() == 0:
        return EdgefleetError(
            f"The lake {lake} has no readings since {cutoff:%Y-%m-%dT%H:%M:%SZ} (newest: {newest}); "
            "pass an earlier --since"
        )
    return EdgefleetError(
        f"The lake {lake} has readings since {cutoff:%Y-%m-%dT%H:%M:%SZ} but none with a label; "
        "retraining needs devices that report ground truth (`label`)"
    )
