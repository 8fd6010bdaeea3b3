"""Where a training session runs: on Spark, or in this process (a pool of local worker processes).

`--execution auto` (the default) keeps Spark whenever the user asked for a cluster (a non-local
`--master`/`SPARK_MASTER`, or a Spark session already running under spark-submit or pyspark) and
for histories only Spark reads identically (CSV and JSON Lines: its schema inference). Otherwise
it reads the row count from the parquet footers (no Spark job, no data read) and trains in this
process below the measured break-even, where Spark's fixed costs (JVM start, two stage barriers,
the shuffle) outweigh its parallelism. Only a local master is ever replaced.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow.dataset as ds

from edgefleet.errors import EdgefleetError
from edgefleet.history import DEVICE_COLUMN, history_format

__all__ = [
    "BREAK_EVEN_DEVICE_ROWS",
    "Execution",
    "ExecutionChoice",
    "choose_execution",
    "count_parquet_work",
    "is_local_master",
    "local_workers",
]

Execution = Literal["auto", "spark", "local"]
Chosen = Literal["spark", "in_process"]

# Device-rows (devices x rows per device) below which `auto` trains in-process on a local master.
# Measured on the 2-core development machine with `benchmarks/train_break_even.py` and
# `benchmarks/train_scale.py --execution local|spark`, JVM start excluded:
# - shared, load 4-10 (2026-12-06): Spark took 3.1x / 2.6x / 2.7x / 1.4x as long at
#   50 / 150 / 300 / 600 devices x 500 rows;
# - quiet (2026-12-07): at 2,000 x 500 in-process 231 s, Spark local[2] 280 s; at 10,000 x 500
#   in-process 5.9 min (28.3 models/s), Spark 6.4 min (26.4): in-process had both the lower fixed
#   cost (fleet sample 11 s vs 28 s) and the lower per-device cost (train phase 328 s vs 340 s).
# On one machine Spark's advantage is memory, not speed: the in-process path holds the whole
# history and every result in this process (driver RSS 2.2 GB at 10,000 devices, against Spark's
# 1.0 GB driver + 2.6 GB JVM). The constant sits just above the largest size measured faster
# in-process (4,970,000 device-rows).
BREAK_EVEN_DEVICE_ROWS = 5_500_000
_LOCAL_MASTER = re.compile(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", re.IGNORECASE)
_IN_PROCESS_FORMATS = ("parquet", "lake")


@dataclass(frozen=True)
class ExecutionChoice:
    """Where the session runs, why, and the work it estimated (None when it did not need to look)."""

    requested: Execution
    chosen: Chosen
    reason: str
    device_rows: int | None = None
    devices: int | None = None
    workers: int | None = None

    @property
    def in_process(self) -> bool:
        """Return True when the session trains in this process, without Spark."""
        return self.chosen == "in_process"

    @property
    def line(self) -> str:
        """Return the one line the CLI prints: what was chosen and why."""
        where = "in-process" if self.in_process else "Spark"
        return f"execution: {where} ({self.reason})"

    def as_record(self) -> dict[str, object]:
        """Return the choice as the summary JSON and the MLflow params record it."""
        return {
            "requested": self.requested,
            "chosen": self.chosen,
            "reason": self.reason,
            "device_rows": self.device_rows,
            "devices": self.devices,
            "workers": self.workers,
            "break_even_device_rows": BREAK_EVEN_DEVICE_ROWS,
        }


def is_local_master(master: str) -> bool:
    """Return True for `local`, `local[N]`, `local[*]` (and `local[N,F]`): Spark in this machine's JVM."""
    return _LOCAL_MASTER.fullmatch(master.strip()) is not None


def local_workers(master: str) -> int:
    """Return how many worker processes the in-process path uses: the task slots a local master would have."""
    match = _LOCAL_MASTER.fullmatch(master.strip())
    slots = match[1] if match else "*"
    if slots is None:  # plain `local`: one slot, as in Spark
        return 1
    return max(1, os.cpu_count() or 1) if slots == "*" else max(1, int(slots))


def spark_session_running() -> bool:
    """Return True under spark-submit or pyspark, or when a Spark session is active in this process."""
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # spark-submit started the JVM this process joins
        return True
    import sys

    if "pyspark" not in sys.modules:  # no session can be active without pyspark imported
        return False
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession() is not None


def count_parquet_work(path: Path, *, count_devices: bool) -> tuple[int, int | None]:
    """Return (rows, devices) of a parquet file, directory or lake: rows from the footers, devices from one column."""
    try:
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
        rows = int(dataset.count_rows())
        devices = None
        if count_devices and DEVICE_COLUMN in dataset.schema.names:
            column = dataset.to_table(columns=[DEVICE_COLUMN]).column(DEVICE_COLUMN)
            devices = len(column.drop_null().unique())
    except (OSError, ValueError) as err:
        raise EdgefleetError(f"Cannot read parquet history {path}: {err}") from err
    return rows, devices


def choose_execution(
    requested: Execution, master: str, history: Path, *, session_running: bool | None = None
) -> ExecutionChoice:
    """Return where a training session runs: `requested`, or for `auto` the cheaper side of the break-even."""
    if requested == "spark":
        return ExecutionChoice(requested, "spark", f"--execution spark on {master}")
    if requested == "local":
        fmt = history_format(history)
        if fmt not in _IN_PROCESS_FORMATS:
            raise EdgefleetError(
                f"--execution local reads parquet and the lake only; {history} is {fmt.upper()}, whose schema "
                "Spark infers: use --execution spark, or convert it to parquet"
            )
        ignored = "" if is_local_master(master) else f"; --master {master} is not used"
        workers = local_workers(master) if is_local_master(master) else local_workers("local[*]")
        rows, devices = count_parquet_work(history, count_devices=True)
        return ExecutionChoice(
            requested, "in_process", f"--execution local, {workers} worker processes{ignored}", rows, devices, workers
        )
    if not is_local_master(master):
        return ExecutionChoice(requested, "spark", f"--master {master} names a cluster: training runs there")
    running = spark_session_running() if session_running is None else session_running
    if running:
        return ExecutionChoice(requested, "spark", "a Spark session is already running here (spark-submit/pyspark)")
    fmt = history_format(history)
    if fmt not in _IN_PROCESS_FORMATS:
        return ExecutionChoice(
            requested,
            "spark",
            f"{fmt.upper()} history: only Spark reads it with Spark's schema inference; parquet can train in-process",
        )
    rows, _ = count_parquet_work(history, count_devices=False)
    if rows > BREAK_EVEN_DEVICE_ROWS:
        return ExecutionChoice(
            requested,
            "spark",
            f"{rows:,} device-rows above the measured break-even of {BREAK_EVEN_DEVICE_ROWS:,}; "
            "--execution local to force in-process",
            rows,
        )
    _, devices = count_parquet_work(history, count_devices=True)  # small by now: one column of few rows
    workers = local_workers(master)
    per_device = f"{devices:,} devices x {rows // max(devices or 1, 1):,} rows" if devices else f"{rows:,} rows"
    return ExecutionChoice(
        requested,
        "in_process",
        f"{per_device} = {rows:,} device-rows, below the measured break-even of {BREAK_EVEN_DEVICE_ROWS:,}; "
        f"{workers} worker processes; --execution spark to force Spark",
        rows,
        devices,
        workers,
    )
