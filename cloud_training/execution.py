"""Where a training session runs: on Spark, or in this process (a pool of local worker processes).

`--execution auto` (the default) keeps Spark whenever the user asked for a cluster (a non-local
`--master`/`SPARK_MASTER`, or a Spark session already running under spark-submit or pyspark) and
for histories only Spark reads identically (CSV and JSON Lines: its schema inference). Otherwise
it reads the row and column counts from the parquet footers (no Spark job, no data read) and
trains in this process while the history fits in the memory available: on one machine Spark's
fixed costs (JVM start, two stage barriers, the shuffle) made it slower at every size measured,
and its advantage is holding less in memory. Only a local master is ever replaced.
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
    "IN_PROCESS_BYTES_PER_CELL",
    "IN_PROCESS_MEMORY_SHARE",
    "Execution",
    "ExecutionChoice",
    "available_memory_bytes",
    "choose_execution",
    "count_parquet_cells",
    "count_parquet_work",
    "is_local_master",
    "local_workers",
]

Execution = Literal["auto", "spark", "local"]
Chosen = Literal["spark", "in_process"]

# On one machine in-process training was faster than Spark at every size measured (JVM start
# excluded, `benchmarks/train_break_even.py`, `benchmarks/train_scale.py --execution local|spark`):
# - shared, load 4-10 (2026-12-06): Spark took 3.1x / 2.6x / 2.7x / 1.4x as long at
#   50 / 150 / 300 / 600 devices x 500 rows;
# - quiet (2026-12-07): at 2,000 x 500 in-process 231 s, Spark local[2] 280 s; at 10,000 x 500
#   5.9 min against 6.4 min; at 50,000 x 500 in-process 28.4 min (Spark on a slower host 43 min).
# Spark's advantage here is memory: the in-process path holds the whole history and every result
# in this machine's memory. So `auto` trains in-process while that fits, judged on its measured
# peak: the machine's memory rose 9.2 GB at 50,000 x 500 rows x 7 columns (53 B per cell), driver
# RSS 2.2 GB at 10,000 (63 B per cell, the interpreter included).
IN_PROCESS_BYTES_PER_CELL = 64
# Share of the memory available now that the in-process estimate may take: the rest is headroom
# for what else runs here, and for estimates that fall short (wide string columns).
IN_PROCESS_MEMORY_SHARE = 0.6
_KEY_COLUMNS = 3  # device_id, ts and the label, read beside the features
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
    memory_estimate_bytes: int | None = None
    memory_available_bytes: int | None = None

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
            "memory_estimate_bytes": self.memory_estimate_bytes,
            "memory_available_bytes": self.memory_available_bytes,
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
    requested: Execution,
    master: str,
    history: Path,
    *,
    features: tuple[str, ...] | None = None,
    session_running: bool | None = None,
    memory_available_bytes: int | None = None,
) -> ExecutionChoice:
    """Return where a training session runs: `requested`, or for `auto` in-process while the history fits in memory."""
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
    rows, columns = count_parquet_cells(history, features)
    estimate = rows * columns * IN_PROCESS_BYTES_PER_CELL
    available = available_memory_bytes() if memory_available_bytes is None else memory_available_bytes
    needs = f"{rows:,} device-rows x {columns} columns need ~{_gb(estimate)} in-process"
    if available is not None and estimate > IN_PROCESS_MEMORY_SHARE * available:
        return ExecutionChoice(
            requested,
            "spark",
            f"{needs}, over {IN_PROCESS_MEMORY_SHARE:.0%} of the {_gb(available)} available; "
            "--execution local to force in-process",
            rows,
            memory_estimate_bytes=estimate,
            memory_available_bytes=available,
        )
    _, devices = count_parquet_work(history, count_devices=True)
    workers = local_workers(master)
    per_device = f"{devices:,} devices x {rows // max(devices or 1, 1):,} rows" if devices else f"{rows:,} rows"
    fits = f"of the {_gb(available)} available" if available is not None else "(available memory unknown)"
    return ExecutionChoice(
        requested,
        "in_process",
        f"{per_device} x {columns} columns need ~{_gb(estimate)} {fits}; {workers} worker processes; "
        "--execution spark to force Spark",
        rows,
        devices,
        workers,
        memory_estimate_bytes=estimate,
        memory_available_bytes=available,
    )


def count_parquet_cells(path: Path, features: tuple[str, ...] | None) -> tuple[int, int]:
    """Return (rows, columns the in-process reader keeps) of a parquet history, from its footers and schema."""
    try:
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
        rows = int(dataset.count_rows())
        names = dataset.schema.names
    except (OSError, ValueError) as err:
        raise EdgefleetError(f"Cannot read parquet history {path}: {err}") from err
    # Without --features every numeric column may become one: count them all, an over-estimate.
    columns = len(features) + _KEY_COLUMNS if features else len(names)
    return rows, max(columns, 1)


def available_memory_bytes() -> int | None:
    """Return the memory this process may still take: MemAvailable, capped by its cgroup's limit (None: unknown)."""
    available = _meminfo_available()
    room = _cgroup_room()
    if room is not None:
        available = room if available is None else min(available, room)
    return available


def _meminfo_available() -> int | None:
    """Return /proc/meminfo's MemAvailable in bytes (None off Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Return a container's memory limit minus its usage (cgroup v2, then v1); None when it has no limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit_text = Path(limit_file).read_text(encoding="ascii").strip()
            usage = int(Path(usage_file).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= 1 << 60:  # v1's "no limit"
            return None
        return max(int(limit_text) - usage, 0)
    return None


def _gb(n_bytes: int | None) -> str:
    """Return a byte count as the reason line shows it."""
    return "?" if n_bytes is None else f"{n_bytes / 1e9:.1f} GB"
