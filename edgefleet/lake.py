"""The telemetry lake: layout, columns and readers, the one home of what the lake looks like.

Layout: `<lake>/date=YYYY-MM-DD/part-<uuid>.parquet`, written by the local IoT Hub sink
(`edgehub.sink.LakeSink`) and read by training, retraining, the demo's report and the tests.
Columns: `device_id`, `seq`, `ts`, one column per feature (named as in the reading), `label`
(NaN when absent), the `prediction_*` and `edge_*` columns (null for raw telemetry),
`source_module` (which module sent the row upstream) and the columns of the message that carried
the row: `message_id` and `correlation_id` (its `$.mid`/`$.cid`, null when unset) and
`properties` (its application properties as a JSON object text, "{}" when none). Files written
before the message columns existed lack them: `read_lake` returns them as nulls there.
Delivery is at least once, so a reading may land twice; `read_lake` returns one row per
(device_id, seq) and source module. Files are written to a dot-prefixed temp name and renamed,
so readers never see half a file. `edgefleet.lake_compact` merges a partition's small files
while the sink writes; its `_compacting-*.json` markers tell `read_lake` which files a merge
replaces, so it never counts a row twice meanwhile. Beside the
parquet, in `_`-prefixed directories that parquet readers (pyarrow, Spark) skip, JSON Lines per
UTC day:
`_deadletters/` (dead letters) and `_events/` (alerts and every other message).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from edgefleet.alerts import ALERT_SCHEMA
from edgefleet.filemodes import open_private, private_dir
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN
from edgefleet.messages import RESERVED_FEATURE_NAMES, RESERVED_FEATURE_PREFIXES

logger = logging.getLogger(__name__)

__all__ = [
    "BOOKKEEPING_COLUMNS",
    "COMPACTION_MARKER_GLOB",
    "COMPACTION_MARKER_PREFIX",
    "DATE_COLUMN",
    "DEADLETTER_DIR",
    "EDGE_COLUMNS",
    "EVENTS_DIR",
    "MESSAGE_COLUMNS",
    "PREDICTION_COLUMNS",
    "PREDICTION_VALUE_COLUMN",
    "PREDICTION_VERSION_COLUMN",
    "SEQ_COLUMN",
    "SOURCE_COLUMN",
    "append_to_lake",
    "drop_duplicate_readings",
    "lake_feature_columns",
    "lake_files",
    "read_deadletters",
    "read_drift_alerts",
    "read_jsonl",
    "read_lake",
]

SEQ_COLUMN = "seq"
DATE_COLUMN = "date"  # the partition column (`date=YYYY-MM-DD` directories)
DEADLETTER_DIR = "_deadletters"
EVENTS_DIR = "_events"
# Flat names of the Prediction contract's `prediction` and `edge` objects, with their dtypes.
PREDICTION_COLUMNS: Mapping[str, str] = {
    "prediction_value": "float64",
    "prediction_model": "string",
    "prediction_model_version": "string",
    "prediction_fallback_reason": "string",
}
EDGE_COLUMNS: Mapping[str, str] = {
    "edge_device": "string",
    "edge_received_ts": "datetime",
    "edge_latency_ms": "float64",
}
SOURCE_COLUMN = "source_module"
# What the message that carried a row said about itself (all strings, null when unset).
MESSAGE_COLUMNS: Mapping[str, str] = {"message_id": "string", "correlation_id": "string", "properties": "string"}
PREDICTION_VALUE_COLUMN = "prediction_value"
PREDICTION_VERSION_COLUMN = "prediction_model_version"
BOOKKEEPING_COLUMNS: tuple[str, ...] = (*PREDICTION_COLUMNS, *EDGE_COLUMNS, SOURCE_COLUMN, *MESSAGE_COLUMNS)
# A compaction in progress (edgefleet.lake_compact): `_`-prefixed, so parquet readers skip it.
COMPACTION_MARKER_PREFIX = "_compacting-"
COMPACTION_MARKER_GLOB = f"{COMPACTION_MARKER_PREFIX}*.json"
_READ_ATTEMPTS = 5  # listings retried when a compaction removed a listed file meanwhile


def append_to_lake(lake_dir: Path, rows: pd.DataFrame) -> list[Path]:
    """Append rows to the lake, one new file per day, each written atomically; folders 0700, files 0600."""
    if rows.empty:
        return []
    ts = pd.to_datetime(rows[TS_COLUMN], utc=True)
    written = []
    private_dir(lake_dir)
    for day, part in rows.groupby(ts.dt.strftime("%Y-%m-%d"), sort=True):
        day_dir = private_dir(lake_dir / f"date={day}")
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = day_dir / f".{name}.tmp"  # dot-prefixed: readers skip it until renamed
        # Written through a handle opened 0600: the readings are never readable by others, not even briefly.
        with open_private(tmp, "wb") as handle:
            part.to_parquet(handle, index=False, coerce_timestamps="us", allow_truncated_timestamps=True)
        final = day_dir / name
        tmp.replace(final)
        written.append(final)
    return written


def lake_feature_columns(lake_dir: Path) -> set[str]:
    """Return the feature columns the lake's files already have (read from their schemas, not their rows)."""
    names: set[str] = set()
    for path in Path(lake_dir).glob("date=*/*.parquet"):
        try:
            columns = pq.read_schema(path).names
        except (OSError, ValueError) as err:  # a damaged file: the other files still tell the schema
            logger.warning("Cannot read the schema of %s: %s", path, err)
            continue
        names.update(
            c for c in columns if c not in RESERVED_FEATURE_NAMES and not c.startswith(RESERVED_FEATURE_PREFIXES)
        )
    return names


def drop_duplicate_readings(rows: pd.DataFrame) -> pd.DataFrame:
    """Return one row per (device_id, seq) and source module, preferring a row that carries a prediction.

    At-least-once delivery (a module or broker restarted before its acknowledgement went out)
    lands some readings twice. The raw telemetry row (`source_module` sensor) and the prediction
    row (inference) of one reading are two records of two routes, not duplicates: both stay.
    Rows without a device id or seq cannot be told apart and are all kept. Row order is kept.
    """
    if rows.empty or DEVICE_COLUMN not in rows or SEQ_COLUMN not in rows:
        return rows
    keys = [DEVICE_COLUMN, SEQ_COLUMN, *([SOURCE_COLUMN] if SOURCE_COLUMN in rows else [])]
    ranked = rows
    if PREDICTION_VALUE_COLUMN in rows:
        # Stable sort: rows with a prediction first, otherwise the order they were written in.
        ranked = rows.iloc[rows[PREDICTION_VALUE_COLUMN].isna().to_numpy().argsort(kind="stable")]
    identified = ranked[DEVICE_COLUMN].notna() & ranked[SEQ_COLUMN].notna()
    keep = ~ranked.duplicated(subset=keys, keep="first") | ~identified
    if keep.all():
        return rows
    return ranked[keep].sort_index().reset_index(drop=True)


def read_lake(lake_dir: Path, *, keep_duplicates: bool = False) -> pd.DataFrame:
    """Return the lake's rows, one per reading and source module (every row with `keep_duplicates`)."""
    for attempt in range(_READ_ATTEMPTS):
        files = lake_files(lake_dir)
        if not files:
            return pd.DataFrame(columns=[DEVICE_COLUMN, SEQ_COLUMN, TS_COLUMN, LABEL_COLUMN, SOURCE_COLUMN])
        try:
            rows = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
        except FileNotFoundError:  # a compaction merged a listed file away: its rows are in the merged file
            if attempt == _READ_ATTEMPTS - 1:
                raise
            continue
        return rows if keep_duplicates else drop_duplicate_readings(rows)
    raise AssertionError("unreachable")


def lake_files(lake_dir: Path) -> list[Path]:
    """Return the lake's parquet files, without those a compaction in progress replaces (see lake_compact).

    A compaction's marker goes writing -> committed -> deleted. The markers are read before and
    after the listing; when they agree, the listing saw one state of each compaction: while
    `writing` its merged files may be half renamed (read the inputs), once `committed` its inputs
    may be half deleted (read the merged files). When they differ, list again.
    """
    lake_dir = Path(lake_dir)
    for _ in range(_READ_ATTEMPTS):
        before = _compaction_markers(lake_dir)
        files = sorted(lake_dir.glob("date=*/*.parquet"))
        after = _compaction_markers(lake_dir)
        if before == after:
            break
    replaced = {
        marker.parent / name
        for marker, (state, inputs, outputs) in after.items()
        for name in (inputs if state == "committed" else outputs)
    }
    return [path for path in files if path not in replaced]


def _compaction_markers(lake_dir: Path) -> dict[Path, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Return each compaction marker's state, inputs and outputs (an unreadable one is left out)."""
    found = {}
    for marker in lake_dir.glob(f"date=*/{COMPACTION_MARKER_GLOB}"):
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
            found[marker] = (str(record["state"]), tuple(record["inputs"]), tuple(record["outputs"]))
        except (OSError, ValueError, KeyError, TypeError):  # finished meanwhile, or not a marker we wrote
            continue
    return found


def read_jsonl(folder: Path) -> list[dict[str, Any]]:
    """Return the records of every `*.jsonl` file in a lake side folder, in file order.

    The sink may be appending while this reads: a last line without its newline is left for the
    next read, and a line that is not a JSON object is skipped and counted in a warning.
    """
    records: list[dict[str, Any]] = []
    unreadable = 0
    for path in sorted(Path(folder).glob("*.jsonl")):
        *complete, _partial = path.read_text(encoding="utf-8", errors="replace").split("\n")
        for line in complete:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                unreadable += 1
    if unreadable:
        logger.warning("Skipped %d unreadable line(s) in %s", unreadable, folder)
    return records


def read_deadletters(lake_dir: Path) -> list[dict[str, Any]]:
    """Return the dead letters the IoT Hub sink kept."""
    return read_jsonl(Path(lake_dir) / DEADLETTER_DIR)


def read_drift_alerts(lake_dir: Path) -> list[dict[str, Any]]:
    """Return the edge's `drift` alerts the IoT Hub sink kept (in `<lake>/_events`)."""
    return [
        body
        for record in read_jsonl(Path(lake_dir) / EVENTS_DIR)
        if isinstance(body := record.get("body"), dict)
        and body.get("schema") == ALERT_SCHEMA
        and body.get("kind") == "drift"
    ]
