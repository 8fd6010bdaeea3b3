"""The in-process wiring of the two-pass training: the Spark job's reader and passes, without Spark.

`read_history_local` reads parquet and the lake into the frame `read_history_spark` makes (same
columns, dtypes, feature order and row filter); `train_fleet_in_processes` runs the pure
per-device functions of `fleet.py` and `device_training.py` on a pool of worker processes, one
per slot the local master would have had, and returns the rows in device order, as `collect`
does for Spark.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from cloud_training.device_training import (
    DeviceResult,
    FleetPredictors,
    TrainingConfig,
    results_frame,
    train_device,
)
from cloud_training.fleet import FleetModel, SampleRecord, fleet_from_samples, fleet_sample_record, samples_frame
from edgefleet.errors import EdgefleetError, HistoryError
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN, check_columns, infer_features

__all__ = ["device_frames", "read_history_local", "train_fleet_in_processes"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CHUNKS_PER_WORKER = 4  # as Spark's tasks per slot: balances uneven devices, moves the progress bar
_WORKER: dict[str, Any] = {}  # each worker process's config and fleet model, set once by its initializer
_INHERITED: list[list[pd.DataFrame]] = []  # the frames of the pool being forked, which its workers inherit


def _is_spark_numeric(kind: pa.DataType) -> bool:
    """Return True for what Spark reads as a NumericType (nanosecond timestamps too: read as longs)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_timestamp(kind):
        return kind.unit == "ns"  # spark.sql.legacy.parquet.nanosAsLong, as the training session sets it
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def read_history_local(path: Path, features: tuple[str, ...] | None) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Read parquet or the lake into the frame `read_history_spark` makes: typed columns, null devices dropped."""
    try:
        dataset = ds.dataset(str(path.resolve()), format="parquet", partitioning="hive")
        schema = dataset.schema
        check_columns(schema.names, features)
        if features is None:
            numeric = [f.name for f in schema if _is_spark_numeric(f.type)]
            features = infer_features(schema.names, numeric)
        table = dataset.to_table(columns=[DEVICE_COLUMN, TS_COLUMN, *features, LABEL_COLUMN])
    except (OSError, pa.ArrowException) as err:
        raise HistoryError(f"Cannot read parquet history {path}: {err}") from err
    frame = table.to_pandas()
    frame = frame[frame[DEVICE_COLUMN].notna()]
    out = pd.DataFrame(index=frame.index)
    out[DEVICE_COLUMN] = frame[DEVICE_COLUMN].astype(str)
    out[TS_COLUMN] = _timestamps(frame[TS_COLUMN])
    for column in (*features, LABEL_COLUMN):
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values):  # a nanosecond timestamp: Spark sees its long
            values = values.astype("int64")
        out[column] = pd.to_numeric(values, errors="coerce").astype(float)
    return out.reset_index(drop=True), tuple(features)


def _timestamps(ts: pd.Series) -> pd.Series:
    """Return `ts` as UTC timestamps by Spark's rules (`timestamp_column`): epoch numbers by magnitude, text parsed."""
    if pd.api.types.is_datetime64_any_dtype(ts):
        return pd.to_datetime(ts, utc=True).dt.floor("us")  # Spark keeps microseconds
    if not pd.api.types.is_numeric_dtype(ts):
        return pd.to_datetime(ts, utc=True, errors="coerce").dt.floor("us")
    values = ts.to_numpy(dtype=float)
    magnitude = np.abs(values)
    # To microseconds: nanoseconds, microseconds and milliseconds are truncated to whole units first, as Spark does.
    micros = np.select(
        [magnitude > 1e17, magnitude > 1e14, magnitude > 1e11],
        [np.trunc(values / 1000.0), np.trunc(values), np.trunc(values) * 1000.0],
        values * 1e6,
    )
    return pd.Series(pd.to_datetime(np.trunc(micros), unit="us", utc=True), index=ts.index)


def device_frames(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """Split a history into one frame per device, in device order, as the grouped map hands them over."""
    return [group.reset_index(drop=True) for _, group in frame.groupby(DEVICE_COLUMN, sort=True)]


def _init_worker(config: TrainingConfig, predictors: FleetPredictors | None) -> None:
    from threadpoolctl import threadpool_limits

    _WORKER.update(config=config, predictors=predictors, limits=threadpool_limits(limits=1))


def _sample_worker(frame: pd.DataFrame) -> SampleRecord:
    return fleet_sample_record(frame, _WORKER["config"])


def _train_worker(frame: pd.DataFrame) -> DeviceResult:
    return train_device(frame, _WORKER["config"], _WORKER["predictors"])


def _pool_map(
    function: Callable[[pd.DataFrame], Any],
    frames: list[pd.DataFrame],
    workers: int,
    initargs: tuple[Any, ...],
    on_progress: ProgressCallback | None = None,
) -> Iterator[Any]:
    """Yield `function(frame)` for each frame, in order, computed on `workers` forked processes."""
    if workers <= 1:
        _init_worker(*initargs)
        for done, frame in enumerate(frames, 1):
            yield function(frame)
            if on_progress:
                on_progress(done, len(frames))
        return
    chunk = max(1, len(frames) // (workers * CHUNKS_PER_WORKER))
    tasks: Iterable[Any] = frames
    call = function
    # Forked workers start in milliseconds with everything imported (spawn re-imports sklearn in
    # each), and read the frames they inherit by index instead of receiving each one pickled.
    fork = "fork" in multiprocessing.get_all_start_methods()
    if fork:
        _INHERITED[:] = [frames]  # pools run one after another: one list is being inherited at a time
        tasks, call = range(len(frames)), functools.partial(_on_inherited_frame, function)
    context = multiprocessing.get_context("fork" if fork else "spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
            for done, result in enumerate(pool.map(call, tasks, chunksize=chunk), 1):
                yield result
                if on_progress and (done % chunk == 0 or done == len(frames)):
                    on_progress(done, len(frames))
    finally:
        _INHERITED.clear()


def _on_inherited_frame(function: Callable[[pd.DataFrame], Any], index: int) -> Any:
    return function(_INHERITED[0][index])


def train_fleet_in_processes(
    frames: list[pd.DataFrame],
    config: TrainingConfig,
    fleet_max_rows: int | None,
    workers: int,
    on_progress: ProgressCallback | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, FleetModel]:
    """Choose the fleet model, then train every device against it on `workers` processes: the Spark job, locally.

    The devices' results come back in device order, not yet gated for staleness (the driver does that).
    """
    import time

    started = time.perf_counter()
    # Records, not frames: a frame per device costs more to build, pickle and concatenate than its sample.
    samples = samples_frame(_pool_map(_sample_worker, frames, workers, (config, None)))
    sampled = time.perf_counter()
    try:
        fleet = fleet_from_samples(samples, config, fleet_max_rows, threads=workers)
    except ValueError as err:
        raise EdgefleetError(f"Cannot train the fleet model: {err}. Check the history's data quality.") from err
    if timings is not None:
        timings["fleet_sample_s"] = sampled - started
        timings["fleet_fit_s"] = time.perf_counter() - sampled
        timings["fleet_s"] = time.perf_counter() - started
    logger.info("fleet model %s from %d devices' samples (%d rows)", fleet.family, len(samples), fleet.n_train)
    phase = time.perf_counter()
    trained = list(_pool_map(_train_worker, frames, workers, (config, fleet.predictors), on_progress))
    if timings is not None:
        timings["train_s"] = time.perf_counter() - phase
    return results_frame(trained), fleet
