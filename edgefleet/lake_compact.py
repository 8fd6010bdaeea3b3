"""Compaction of the telemetry lake: merge a day partition's small parquet files into files of a target size.

The sink writes a file per flush, so a busy fleet leaves thousands of small files a day, which
Spark reads slowly (one task setup and footer read per file). `compact_partition` merges the
small ones (`part-*.parquet` under `SMALL_FRACTION` of the target) into files of about
`target_bytes`, while the sink keeps writing:

1. an exclusive `fcntl` lock on `<partition>/.compact.lock` (a second compaction of the
   partition refuses, or waits with `wait=True`),
2. a marker `<partition>/_compacting-<id>.json` (state `writing`) naming the inputs (the files
   listed now: a file the sink adds later is never touched) and the outputs to be written,
3. each output written to a dot-prefixed temp name, fsynced, renamed into place,
4. the marker replaced by state `committed`, then exactly the listed inputs deleted, then the
   marker deleted.

Guarantees. `edgefleet.lake.read_lake` reads the markers: it never sees a merged file and its
inputs both (in state `writing` it skips the outputs, once `committed` the inputs), and it
retries its listing when a file it listed was merged away. A raw parquet reader of the partition
(Spark, pyarrow) sees every row once, except one whose listing falls in the milliseconds between
the rename and the deletion of the inputs: it may read rows twice (the lake is at-least-once
anyway: dedup by (device_id, seq, source_module)) or miss a deleted input (a retry reads it). A
compaction killed midway leaves its marker: the next compaction of that partition finishes it
(`committed`: delete the inputs) or undoes it (`writing`: delete the outputs), before anything else.

Schemas: the inputs may differ (feature columns added over time, files written before the message
columns existed). The merged file has their union, types promoted (an all-null column takes the
type the other files give it), columns in the lake's order; a row takes null where its file
lacked the column, as `read_lake` reads it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from edgefleet.errors import EdgefleetError
from edgefleet.filemodes import open_private, write_atomic
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN
from edgefleet.lake import BOOKKEEPING_COLUMNS, COMPACTION_MARKER_GLOB, COMPACTION_MARKER_PREFIX, SEQ_COLUMN

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TARGET_BYTES",
    "CompactionResult",
    "LakeBusyError",
    "compact_partition",
    "lake_partitions",
]

# Spark's default split size (spark.sql.files.maxPartitionBytes): one task per file at this size.
DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
# A file under this share of the target is merged; a bigger one is left as it is.
SMALL_FRACTION = 0.75
# Rows per row group of a merged file (the inputs' tiny row groups are coalesced up to this).
ROW_GROUP_ROWS = 500_000
LOCK_NAME = ".compact.lock"
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_PART_FILE = re.compile(r"^part-[^/]*\.parquet$")


class LakeBusyError(EdgefleetError):
    """Raise when another compaction holds a partition's lock."""


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What one partition's compaction did (or, on a dry run, would do)."""

    partition: str
    files_before: int
    files_after: int
    files_merged: int
    files_written: int
    rows: int
    bytes_before: int
    bytes_after: int
    seconds: float
    dry_run: bool = False
    recovered: int = 0  # markers of killed compactions finished or undone first

    def summary(self) -> str:
        """Return one line for a person: files before/after, rows, bytes, seconds."""
        verb = "would merge" if self.dry_run else "merged"
        if not self.files_merged:
            return f"{self.partition}: {self.files_before} file(s), nothing to merge"
        return (
            f"{self.partition}: {self.files_before} -> {self.files_after} files "
            f"({verb} {self.files_merged} into {self.files_written}), {self.rows:,} rows, "
            + (f"{_mb(self.bytes_before)}" if self.dry_run else f"{_mb(self.bytes_before)} -> {_mb(self.bytes_after)}")
            + f", {self.seconds:.2f} s"
            + (f", finished {self.recovered} interrupted compaction(s) first" if self.recovered else "")
        )


def lake_partitions(
    lake_dir: Path, *, day: date | None = None, older_than_h: float | None = None, now: datetime | None = None
) -> list[Path]:
    """Return the lake's `date=` partitions: one day's, those whose day ended `older_than_h` ago, or all."""
    lake_dir = Path(lake_dir)
    if not lake_dir.is_dir():
        raise EdgefleetError(f"no lake at {lake_dir} (expected <lake>/date=YYYY-MM-DD/part-*.parquet)")
    found = sorted(p for p in lake_dir.iterdir() if p.is_dir() and _DATE_DIR.match(p.name))
    if day is not None:
        wanted = lake_dir / f"date={day.isoformat()}"
        if wanted not in found:
            raise EdgefleetError(f"the lake {lake_dir} has no partition date={day.isoformat()}")
        return [wanted]
    if older_than_h is not None:
        cutoff = (now or datetime.now(UTC)) - timedelta(hours=older_than_h)
        return [p for p in found if _day_end(p) <= cutoff]
    return found


def compact_partition(
    partition: Path, target_bytes: int = DEFAULT_TARGET_BYTES, *, dry_run: bool = False, wait: bool = False
) -> CompactionResult:
    """Merge a partition's small parquet files into files of about `target_bytes`; see the module doc."""
    if target_bytes <= 0:
        raise EdgefleetError("the target size must be positive")
    partition = Path(partition)
    started = time.monotonic()
    with _partition_lock(partition, wait=wait):
        recovered = 0 if dry_run else _recover(partition)
        files = _part_files(partition)
        sizes = {path: path.stat().st_size for path in files}
        bins = _plan(files, sizes, target_bytes)
        inputs = [path for group in bins for path in group]
        bytes_before = sum(sizes.values())
        if dry_run or not bins:
            rows = sum(pq.ParquetFile(path).metadata.num_rows for path in inputs)
            return CompactionResult(
                partition.name,
                len(files),
                len(files) - len(inputs) + len(bins),
                len(inputs),
                len(bins),
                rows,
                bytes_before,
                bytes_before,
                time.monotonic() - started,
                dry_run=dry_run,
                recovered=recovered,
            )
        outputs = [partition / f"part-{uuid.uuid4().hex}.parquet" for _ in bins]
        marker = partition / f"{COMPACTION_MARKER_PREFIX}{uuid.uuid4().hex}.json"
        _write_marker(marker, "writing", inputs, outputs)
        rows = 0
        for group, output in zip(bins, outputs, strict=True):
            rows += _merge(group, _temp(output))
        for output in outputs:
            _temp(output).replace(output)
        _fsync_dir(partition)
        _write_marker(marker, "committed", inputs, outputs)
        for path in inputs:
            path.unlink(missing_ok=True)
        marker.unlink()
        _fsync_dir(partition)
        bytes_after = bytes_before - sum(sizes[p] for p in inputs) + sum(o.stat().st_size for o in outputs)
        result = CompactionResult(
            partition.name,
            len(files),
            len(files) - len(inputs) + len(outputs),
            len(inputs),
            len(outputs),
            rows,
            bytes_before,
            bytes_after,
            time.monotonic() - started,
            recovered=recovered,
        )
    logger.info("Compacted %s", result.summary())
    return result


# -- planning -----------------------------------------------------------------------------------


def _part_files(partition: Path) -> list[Path]:
    """Return the partition's visible data files, oldest first (temp files and markers are not data)."""
    found = []
    for path in partition.iterdir():
        if _PART_FILE.match(path.name):
            try:
                found.append((path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:  # removed meanwhile (never by the sink; by hand)
                continue
    return [path for _, _, path in sorted(found)]


def _plan(files: Sequence[Path], sizes: dict[Path, int], target_bytes: int) -> list[list[Path]]:
    """Group the small files, oldest first, into bins of about `target_bytes`; a bin of one file is left alone."""
    bins: list[list[Path]] = []
    current: list[Path] = []
    current_bytes = 0
    for path in files:
        if sizes[path] >= SMALL_FRACTION * target_bytes:
            continue
        current.append(path)
        current_bytes += sizes[path]
        if current_bytes >= target_bytes:
            bins.append(current)
            current, current_bytes = [], 0
    bins.append(current)
    return [group for group in bins if len(group) > 1]


# -- merging ------------------------------------------------------------------------------------


def unified_schema(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """Return the union of lake file schemas, types promoted, columns in the lake's order."""
    try:
        merged = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise EdgefleetError(f"the files' schemas cannot be merged: {err}") from err
    head = [DEVICE_COLUMN, SEQ_COLUMN, TS_COLUMN]
    tail = [LABEL_COLUMN, *BOOKKEEPING_COLUMNS]
    names = merged.names
    extras = [n for n in names if n not in head and n not in tail and n.startswith(("prediction_", "edge_"))]
    features = [n for n in names if n not in head and n not in tail and n not in extras]
    order = [n for n in (*head, *features, *tail, *extras) if n in names]
    return pa.schema([merged.field(n) for n in order])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return `table` with `schema`'s columns and types: a column it lacks becomes nulls."""
    columns = [
        table.column(field.name).cast(field.type)
        if field.name in table.column_names
        else pa.nulls(len(table), field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _merge(group: Sequence[Path], tmp: Path) -> int:
    """Write the rows of `group` into one parquet file at `tmp` (0600, fsynced); return the rows written."""
    schema = unified_schema([pq.read_schema(path) for path in group])
    open_private(tmp, "wb").close()  # created 0600 first: the writer below keeps the mode
    rows = 0
    try:
        with pq.ParquetWriter(str(tmp), schema, compression="snappy") as writer:
            pending: list[pa.Table] = []
            pending_rows = 0
            for path in group:
                table = conform(pq.read_table(path), schema)
                pending.append(table)
                pending_rows += len(table)
                if pending_rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    rows += pending_rows
                    pending, pending_rows = [], 0
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                rows += pending_rows
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())  # the inputs are deleted next: the merged rows must be on disk first
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


# -- markers, lock, recovery --------------------------------------------------------------------


def _write_marker(marker: Path, state: str, inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    """Write (atomically) what a compaction is doing: its state, inputs and outputs (names in the partition)."""
    record = {"state": state, "inputs": [p.name for p in inputs], "outputs": [p.name for p in outputs]}
    write_atomic(marker, json.dumps(record).encode())


def _recover(partition: Path) -> int:
    """Finish (committed) or undo (writing) what a killed compaction left; return how many (lock held)."""
    count = 0
    for marker in sorted(partition.glob(COMPACTION_MARKER_GLOB)):
        try:
            record: dict[str, Any] = json.loads(marker.read_text(encoding="utf-8"))
            state, inputs, outputs = record["state"], record["inputs"], record["outputs"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("Leaving the unreadable compaction marker %s: %s", marker, err)
            continue
        if state == "committed":
            for name in inputs:
                (partition / name).unlink(missing_ok=True)
        else:
            for name in outputs:
                (partition / name).unlink(missing_ok=True)
                _temp(partition / name).unlink(missing_ok=True)
        marker.unlink()
        logger.warning("%s an interrupted compaction of %s", "Finished" if state == "committed" else "Undid", partition)
        count += 1
    return count


@contextmanager
def _partition_lock(partition: Path, *, wait: bool) -> Iterator[None]:
    """Hold the partition's compaction lock; raise LakeBusyError if another holds it (unless `wait`)."""
    handle = open_private(partition / LOCK_NAME, "ab")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as err:
            raise LakeBusyError(f"another compaction is running on {partition} (it holds {LOCK_NAME})") from err
        yield
    finally:
        handle.close()  # closing releases the lock; the file stays (deleting it would race a waiter)


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _day_end(partition: Path) -> datetime:
    match = _DATE_DIR.match(partition.name)
    assert match is not None
    return datetime.combine(date.fromisoformat(match.group(1)), datetime.min.time(), UTC) + timedelta(days=1)


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"
