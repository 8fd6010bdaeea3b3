"""Spark wiring of the two-pass training: sample the fleet's rows, choose the fleet model, train the devices.

The device-partitioned input is persisted once and read by both grouped passes: the cheap
sample pass (`fleet.fleet_sample_frame` per device) and the device pass, whose UDF closes over
the fitted fleet model (no SparkContext broadcast: closures work under Spark Connect too).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import pandas as pd
from pyspark.sql import DataFrame

from cloud_training.device_training import RESULT_DDL, FleetPredictors, TrainingConfig, results_frame, train_device
from cloud_training.fleet import SAMPLE_DDL, FleetModel, fleet_from_samples, fleet_sample_frame
from cloud_training.spark_job import limit_native_threads
from edgefleet.history import DEVICE_COLUMN

__all__ = ["choose_fleet_on_spark", "make_sample_udf", "make_train_udf", "train_all_devices"]

logger = logging.getLogger(__name__)


def make_sample_udf(config: TrainingConfig) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Return the grouped-map function that samples one device's fit and inner rows for the fleet model."""

    def fleet_sample_udf(pdf: pd.DataFrame) -> pd.DataFrame:
        return fleet_sample_frame(pdf, config)

    return fleet_sample_udf


def choose_fleet_on_spark(
    df: DataFrame, config: TrainingConfig, max_rows: int | None, timings: dict[str, float] | None = None
) -> FleetModel:
    """Collect the devices' samples (one grouped pass over `df`) and choose the fleet model on the driver."""
    started = time.perf_counter()
    samples = df.groupBy(DEVICE_COLUMN).applyInPandas(make_sample_udf(config), schema=SAMPLE_DDL).toPandas()
    sampled = time.perf_counter()
    # The driver fits while the executors wait: its own cores are free.
    fleet = fleet_from_samples(samples, config, max_rows, threads=os.cpu_count() or 1)
    if timings is not None:
        timings["fleet_sample_s"] = sampled - started
        timings["fleet_fit_s"] = time.perf_counter() - sampled
    logger.info("fleet model %s from %d devices' samples (%d rows)", fleet.family, len(samples), fleet.n_train)
    return fleet


def make_train_udf(config: TrainingConfig, fleet: FleetPredictors | None) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Return the grouped-map function that trains one device per call against the fleet model it closes over."""

    def train_device_udf(pdf: pd.DataFrame) -> pd.DataFrame:
        limit_native_threads()
        return results_frame([train_device(pdf, config, fleet)])

    return train_device_udf


def train_all_devices(df: DataFrame, config: TrainingConfig, fleet: FleetPredictors | None) -> DataFrame:
    """Return the lazy per-device result frame: `groupBy(device_id).applyInPandas(train_device_udf)`."""
    return df.groupBy(DEVICE_COLUMN).applyInPandas(make_train_udf(config, fleet), schema=RESULT_DDL)
