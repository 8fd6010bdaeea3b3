"""Spark wiring: session, history input, and the grouped-map UDFs around the pure functions."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cloud_training.cluster import ClusterError, ConnectProgress, check_master, is_connect, job_failure
from edgefleet.errors import EdgefleetError
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN, check_columns, history_format, infer_features

if TYPE_CHECKING:
    from pyspark.sql.connect.shell.progress import ProgressHandler

logger = logging.getLogger(__name__)

# Native thread pools per Python worker: Spark already runs one task per core.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ARROW_NUM_THREADS": "1",
}
TASKS_PER_SLOT = 4


@dataclass(frozen=True)
class SparkHandle:
    """A running session, how long the JVM took to start, and its scratch dir."""

    session: SparkSession
    jvm_start_s: float
    local_dir: Path
    owned: bool


@contextmanager
def spark_session(master: str, driver_memory: str = "4g", app_name: str = "edgefleet-train") -> Iterator[SparkHandle]:
    """Start (or join, under spark-submit) a Spark session; remove its scratch files afterwards.

    `sc://host:port` opens a Spark Connect session: no JVM on this side, the server's configuration rules.
    """
    check_master(master)  # an unreachable master fails in seconds, not after the JVM's retries
    active = SparkSession.getActiveSession()
    local_dir = Path(tempfile.mkdtemp(prefix="edgefleet-spark-"))
    started = time.perf_counter()
    if is_connect(master):
        session = _connect_session(master, app_name)
        handle = SparkHandle(session, time.perf_counter() - started, local_dir, owned=True)
    elif active is not None:
        handle = SparkHandle(active, 0.0, local_dir, owned=False)
    else:
        # Local-mode Python workers inherit the driver's environment, not spark.executorEnv.
        os.environ.update(SINGLE_THREAD_ENV)
        # SparkContext launches workers with $PYSPARK_PYTHON (default `python3` on PATH), which
        # may not be this environment's interpreter.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.master(master).appName(app_name)
        for key, value in {**_static_conf(driver_memory, local_dir), **SESSION_CONF}.items():
            builder = builder.config(key, value)
        for key, value in {**SINGLE_THREAD_ENV, "TMPDIR": str(local_dir)}.items():
            builder = builder.config(f"spark.executorEnv.{key}", value)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        # Spark's default of 200 shuffle partitions turns a small aggregate into 200 tasks.
        session.conf.set("spark.sql.shuffle.partitions", str(4 * default_parallelism(session)))
        handle = SparkHandle(session, time.perf_counter() - started, local_dir, owned=True)
    try:
        yield handle
    except Exception as err:
        failure = spark_failure(err)
        if failure is None:
            raise
        raise failure from err
    finally:
        if handle.owned:
            try:
                handle.session.stop()
            except Exception as err:  # a lost Connect server cannot release the session: the first error stands
                logger.warning("cannot stop the Spark session: %s", spark_error_line(err))
        shutil.rmtree(local_dir, ignore_errors=True)


# Per-session SQL settings: the builder sets them on a new JVM, a Connect session sets them over the wire.
SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    # pandas writes nanosecond timestamps; read them as longs and convert below.
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Coalescing squeezes a few-MB shuffle into one partition: one core busy.
    "spark.sql.adaptive.coalescePartitions.enabled": "false",
}


def _static_conf(driver_memory: str, local_dir: Path) -> dict[str, str]:
    """Return the settings of a JVM this process starts (a Connect server has its own)."""
    return {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": driver_memory,
        "spark.driver.maxResultSize": "0",
        "spark.local.dir": str(local_dir),
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.python.worker.reuse": "true",
    }


def _connect_session(master: str, app_name: str) -> SparkSession:
    """Open a Spark Connect session: runtime settings only; the server starts the Python workers."""
    session = SparkSession.builder.remote(master.strip()).appName(app_name).create()
    _bound_connect_retries(session)
    # The client logs each server error as a JSON line too; the error itself is raised to the caller.
    logging.getLogger("DataFrameQueryContextLogger").setLevel(logging.CRITICAL)
    for key, value in SESSION_CONF.items():
        session.conf.set(key, value)
    return session


# The Connect client retries a lost server for at least 10 minutes; these retries give up after ~20 s.
CONNECT_MAX_RETRIES = 5
CONNECT_MAX_BACKOFF_MS = 15_000


def _bound_connect_retries(session: SparkSession) -> None:
    """Let a Connect session give up on a lost server within seconds, not the client's default 10 minutes."""
    from pyspark.sql.connect.client.retries import DefaultPolicy

    client = getattr(session, "_client", None)
    if client is not None and hasattr(client, "set_retry_policies"):
        client.set_retry_policies([DefaultPolicy(max_retries=CONNECT_MAX_RETRIES, max_backoff=CONNECT_MAX_BACKOFF_MS)])


def spark_error_line(err: BaseException) -> str:
    """Return the first line of a Spark error."""
    return next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)


def spark_failure(err: BaseException) -> EdgefleetError | None:
    """Return the one-line error for a lost master or Connect server, or None for anything else."""
    failure = job_failure(err)
    return failure if isinstance(failure, ClusterError) else None


def default_parallelism(spark: SparkSession) -> int:
    """Return the number of task slots (asked of the cluster under Spark Connect, which has no SparkContext)."""
    if not is_connect_session(spark):
        return max(1, int(spark.sparkContext.defaultParallelism))
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return max(1, int(configured))
    # `range` splits into the cluster's default parallelism when not told otherwise.
    partitions = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("partition"))
    row = partitions.agg(F.max("partition").alias("last")).first()
    return 1 if row is None else int(row["last"]) + 1


def is_connect_session(spark: SparkSession) -> bool:
    """Return True for a Spark Connect session (no SparkContext on this side)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def training_partitions(slots: int) -> int:
    """Return the partition count for the training pass: a few tasks per slot.

    Each task start costs a shuffle fetch and a sort before its first group reaches Python
    (measured here: 25 tasks on 2 cores idled workers ~6% more than 8 tasks); a few per
    slot still balances uneven partitions and moves the progress bar.
    """
    return slots * TASKS_PER_SLOT


def read_history_spark(
    spark: SparkSession, path: Path, features: tuple[str, ...] | None
) -> tuple[DataFrame, tuple[str, ...]]:
    """Read history (parquet, CSV, JSON Lines, or the lake) into a typed Spark frame."""
    fmt = history_format(path)
    reader = spark.read
    # Absolute: a Connect server or the executors resolve a relative path against their own working dir.
    location = str(path.resolve())
    if fmt in ("parquet", "lake"):
        df = reader.parquet(location)
    elif fmt == "csv":
        df = reader.option("header", True).option("inferSchema", True).csv(location)
    else:
        df = reader.json(location)
    check_columns(df.columns, features)
    if features is None:
        numeric = [f.name for f in df.schema.fields if isinstance(f.dataType, T.NumericType)]
        features = infer_features(df.columns, numeric)
    ts = timestamp_column(df.schema[TS_COLUMN].dataType)
    return (
        df.select(
            F.col(DEVICE_COLUMN).cast("string").alias(DEVICE_COLUMN),
            ts.alias(TS_COLUMN),
            *(F.col(c).cast("double").alias(c) for c in features),
            F.col(LABEL_COLUMN).cast("double").alias(LABEL_COLUMN),
        ).where(F.col(DEVICE_COLUMN).isNotNull()),
        features,
    )


def timestamp_column(ts_type: T.DataType) -> Any:
    """Return the `ts` column as a Spark timestamp, whatever type the source stored it as."""
    ts = F.col(TS_COLUMN)
    if isinstance(ts_type, T.TimestampType | T.TimestampNTZType):
        return ts
    if isinstance(ts_type, T.NumericType):  # epoch numbers: tell the unit by magnitude
        magnitude = F.abs(ts)
        return (
            F.when(magnitude > 1e17, F.timestamp_micros((ts / 1000).cast("long")))
            .when(magnitude > 1e14, F.timestamp_micros(ts.cast("long")))
            .when(magnitude > 1e11, F.timestamp_millis(ts.cast("long")))
            .otherwise(F.timestamp_seconds(ts))
        )
    return F.to_timestamp(ts)


_THREADS_LIMITED: list[Any] = []


def limit_native_threads() -> None:
    """Limit native thread pools to one thread, once per Python worker."""
    # Once per Python worker: the env vars cover OpenMP/BLAS started after them, this covers
    # libraries already loaded; per call it would cost a library scan each time.
    if not _THREADS_LIMITED:
        from threadpoolctl import threadpool_limits

        _THREADS_LIMITED.append(threadpool_limits(limits=1))


class StageProgress:
    """Poll Spark's status tracker and report (done, total) tasks of the running job."""

    def __init__(self, spark: SparkSession, on_progress: Callable[[int, int], None], interval_s: float = 0.5) -> None:
        self._tracker = spark.sparkContext.statusTracker()
        self._on_progress = on_progress
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spark-progress", daemon=True)

    def __enter__(self) -> StageProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            done = total = 0
            for stage_id in self._tracker.getActiveStageIds():
                info = self._tracker.getStageInfo(stage_id)
                if info is not None:
                    done += info.numCompletedTasks
                    total += info.numTasks
            if total:
                self._on_progress(done, total)


def collect(result_df: DataFrame, spark: SparkSession, on_progress: Callable[[int, int], None] | None) -> pd.DataFrame:
    """Run the per-device job and return its rows in device order, reporting task progress when asked.

    Device order makes what follows (the pooled fleet rows) independent of how the cluster partitioned the job.
    """
    if on_progress is None:
        rows = result_df.toPandas()
    elif is_connect_session(spark):
        handler = ConnectProgress(on_progress)
        spark.registerProgressHandler(cast("ProgressHandler", handler))
        try:
            rows = result_df.toPandas()
        finally:
            spark.removeProgressHandler(cast("ProgressHandler", handler))
    else:
        with StageProgress(spark, on_progress):
            rows = result_df.toPandas()
    rows.attrs.clear()  # Spark Connect attaches its query metrics, which parquet cannot store
    return rows.sort_values(DEVICE_COLUMN, kind="stable", ignore_index=True)
