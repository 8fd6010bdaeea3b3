"""The local IoT Hub: `$upstream` messages become telemetry-lake rows.

`LakeSink` is an `Upstream` of the stand-in (`edgehub.upstream`). Telemetry readings and
predictions (single objects or batch envelopes) become flat rows, buffered and written with
`edgefleet.lake.append_to_lake` when `flush_rows` rows are waiting, when the oldest has waited
`flush_every_s`, and on `close()`. Everything else is kept as JSON Lines next to the parquet,
in directories whose `_` prefix makes parquet readers (pyarrow, Spark) skip them:

- `<lake>/_deadletters/YYYY-MM-DD.jsonl`: dead-letter messages, and readings that break the
  telemetry contract (as dead letters with the reason code),
- `<lake>/_events/YYYY-MM-DD.jsonl`: any other message (alerts, twin change notifications,
  non-JSON bodies), with its properties.

Row columns: `device_id`, `seq`, `ts`, one column per feature, `label` (NaN when absent), the
`prediction_*` and `edge_*` columns (null for raw telemetry, so every file has the same
bookkeeping columns and types), `source_module` (which module sent it upstream), and the
message's `message_id`, `correlation_id` and application `properties` (JSON text).

Feature columns: training takes every numeric lake column as a feature, so a name becomes a
column only when something vouches for it. Predictions do: the inference module sends only the
bundle's features. Raw telemetry (the sensor's `telemetry` route) does not: its rows keep the
names the lake already has (its files' schemas at start, plus every name a prediction brought)
and drop the others, counted in `feature_values_dropped`. Only while the lake has no feature
column at all (before any bundle served this edge) do raw names found a column. Either way the
lake holds at most `max_feature_columns`; a name beyond that is dropped too.

Rolling files (`roll_every_s` set; the sink service sets it): a flush appends its rows as a row
group to an open file per date partition, under a dot-prefixed temp name
(`.rolling-<uuid>.parquet.tmp`, which readers skip), and the file is closed and renamed into
place ("rolled") once it reaches `roll_bytes` or has been open `roll_every_s`, at a schema change
(a new feature column) and on `close()`. So the lake gets a few large files instead of one per
flush (benchmarks/lake_files.py); rows become visible when their file rolls. A kill loses the
open files: their messages were never reported durable, so the journal upstream
(`edgehub.sink_service`) still holds them and writes them again at the next start, which first
deletes the temp files a killed run left. Without `roll_every_s` each flush writes its own files.

Compressed bodies: a message whose `contentEncoding` is gzip (the inference module's prediction
batches, `edgefleet.envelope`) is opened before it is read; the lake rows are the same as for the
plain batch, and plain messages (older ones, the sensor's) are read as before. A body that does not
open is dead-lettered with reason `bad_encoding`. The metering counts the message as it arrived:
compressed, as IoT Hub bills it.

Durability: a message's `on_durable` (see `edgehub.upstream`) runs once everything it became is
in the lake's visible files: at once for side-file records (written unbuffered as they come),
after the flush that writes its rows otherwise (after the roll of every file they went to, when
rolling). A flush that fails keeps its rows buffered for the next
one. A message replayed after a crash upstream may come twice: a flush writes one row per
(device_id, seq, source_module) of its buffer (a reading has a sensor row and an inference row).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from edgefleet.envelope import BAD_ENCODING, MAX_OPENED_BYTES, open_body
from edgefleet.filemodes import open_private, private_dir
from edgefleet.history import TS_COLUMN
from edgefleet.lake import (
    BOOKKEEPING_COLUMNS,
    DEADLETTER_DIR,
    EDGE_COLUMNS,
    EVENTS_DIR,
    MESSAGE_COLUMNS,
    PREDICTION_COLUMNS,
    SOURCE_COLUMN,
    append_to_lake,
    lake_feature_columns,
)
from edgefleet.messages import (
    BATCH_SCHEMA,
    DEADLETTER_SCHEMA,
    EMPTY_BATCH,
    TELEMETRY_SCHEMA,
    WRONG_TYPE,
    DeadLetter,
    MessageError,
    Reading,
    decode_json,
    format_ts,
    iot_hub_message_bytes,
    parse_reading,
    payload_text,
    units_4kb,
)
from edgefleet.routes import Message

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_ROLL_BYTES", "DEFAULT_ROLL_EVERY_S", "MAX_FEATURE_COLUMNS", "LakeSink"]

# The widest bundle the lake serves; a lake past this is a device inventing names, not features.
MAX_FEATURE_COLUMNS = 64
MAX_LOGGED_DROPPED_NAMES = 20  # dropped names are logged once each, the first ones only
# Spark's default split size (spark.sql.files.maxPartitionBytes): a rolling file closes at this size.
DEFAULT_ROLL_BYTES = 128 * 1024 * 1024
# Chosen by benchmarks/lake_files.py: 60 s keeps rows visible within a minute and makes 1,440 files a
# day (17,280 with a file per 5 s flush); a 200-device fleet writes ~1.5 GB a day, so 128 MiB takes
# ~2 h and age rolls first. `edgefleet lake compact` then merges a day into files of 128 MiB.
DEFAULT_ROLL_EVERY_S = 60.0
ROLLING_PREFIX = ".rolling-"  # an open rolling file: `.rolling-<uuid>.parquet.tmp` (readers skip dot files)


class LakeSink:
    """Buffer `$upstream` readings and predictions as lake rows; side files for the rest."""

    def __init__(
        self,
        lake_dir: Path,
        flush_every_s: float = 5.0,
        flush_rows: int = 10_000,
        max_feature_columns: int = MAX_FEATURE_COLUMNS,
        *,
        roll_every_s: float | None = None,
        roll_bytes: int = DEFAULT_ROLL_BYTES,
        clock: Callable[[], float] = time.monotonic,
        tick: bool = True,
    ) -> None:
        if flush_every_s <= 0 or flush_rows <= 0 or max_feature_columns <= 0 or roll_bytes <= 0:
            raise ValueError("flush_every_s, flush_rows, max_feature_columns and roll_bytes must be positive")
        if roll_every_s is not None and roll_every_s <= 0:
            raise ValueError("roll_every_s must be positive (or None: a file per flush)")
        self.lake_dir = Path(lake_dir)
        self.flush_every_s = flush_every_s
        self.flush_rows = flush_rows
        self.max_feature_columns = max_feature_columns
        self.roll_every_s = roll_every_s
        self.roll_bytes = roll_bytes
        self._clock = clock
        self._open: dict[str, _RollingFile] = {}  # date -> open rolling file (guarded by _write_lock)
        if roll_every_s is not None:
            _remove_abandoned_rolling_files(self.lake_dir)
        self._features = lake_feature_columns(self.lake_dir)  # the lake's feature columns (guarded by _lock)
        self._dropped_names: set[str] = set()
        self._rows: list[dict[str, Any]] = []
        self._on_flushed: list[Callable[[], None]] = []  # on_durable of the messages whose rows are buffered
        self._oldest: float | None = None  # monotonic time of the oldest buffered row
        self._lock = threading.Lock()  # the buffer and counters
        self._write_lock = threading.Lock()  # one writer at a time, so files appear in order
        self._stats: Counter[str] = Counter()
        self._closed = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="lake-sink-flush", daemon=True)
        if tick:  # False: the caller drives `tick_once` (a simulated clock)
            self._ticker.start()

    # -- receiving ------------------------------------------------------------------------------

    def __call__(self, message: Message, on_durable: Callable[[], None] | None = None) -> None:
        """Take one upstream message: rows for readings and predictions, JSON Lines for the rest."""
        if self._closed.is_set():
            raise RuntimeError("LakeSink is closed")
        self._buffer(self._take(message), on_durable)

    def _take(self, message: Message) -> list[dict[str, Any]]:
        """Write a message's side-file records; return its rows for the buffer."""
        module = message.connection_module_id or message.connection_device_id
        source = f"{module}/{message.output or ''}"
        size = iot_hub_message_bytes(message.body, message.properties, message.system_properties)
        with self._lock:
            self._stats["messages"] += 1
            # What IoT Hub would meter for the traffic upstream of the lake (see iot_hub_message_bytes).
            self._stats["messages_received"] += 1
            self._stats["bytes_received"] += size
            self._stats["units_4kb"] += units_4kb(size)
        if message.kind != "telemetry":
            self._write_event(message, _body_for_record(message))
            return []
        try:
            # Compressed upstream envelopes (edgefleet.envelope) open here; plain bodies pass as they are.
            body = open_body(message.body, message.system_properties)
            obj = decode_json(body, MAX_OPENED_BYTES)
        except MessageError as unreadable:
            if unreadable.reason == BAD_ENCODING:  # a corrupt compressed body: a dead letter with the reason
                self._write_deadletter(DeadLetter.from_error(unreadable, source, message.body).to_json_obj())
            else:
                self._write_event(message, _body_for_record(message))
            return []
        schema = obj.get("schema") if isinstance(obj, dict) else None
        if schema == DEADLETTER_SCHEMA:
            assert isinstance(obj, dict)
            self._write_deadletter({**obj, "received_from": source})
            return []
        if schema == BATCH_SCHEMA:
            assert isinstance(obj, dict)
            items = obj.get("readings")
            if not isinstance(items, list) or not items:
                err = MessageError(EMPTY_BATCH if items == [] else WRONG_TYPE, "batch without a readings array")
                self._write_deadletter(DeadLetter.from_error(err, source, body).to_json_obj())
                return []
        elif schema == TELEMETRY_SCHEMA:
            items = [obj]
        else:
            self._write_event(message, obj)
            return []
        rows = []
        carried = _message_columns(message)
        for item in items:
            try:
                reading = parse_reading(item)
            except MessageError as err:
                self._write_deadletter(DeadLetter.from_item(err, source, item).to_json_obj())
                continue
            assert isinstance(item, dict)  # parse_reading refuses anything else
            rows.append(
                _row(
                    reading,
                    item,
                    module,
                    self._lake_features(reading, vouched=isinstance(item.get("prediction"), dict)),
                )
                | carried
            )
        return rows

    def _lake_features(self, reading: Reading, vouched: bool) -> Iterable[tuple[str, float]]:
        """Return the reading's features that may be lake columns; admit a prediction's new names."""
        with self._lock:
            known = self._features
            if all(name in known for name, _ in reading.features):
                return reading.features
            may_add = vouched or not known
            kept, dropped = [], []
            for name, value in reading.features:
                if name not in known and may_add and len(known) < self.max_feature_columns:
                    known.add(name)
                if name in known:
                    kept.append((name, value))
                else:
                    dropped.append(name)
            if dropped:
                self._stats["feature_values_dropped"] += len(dropped)
                new = [n for n in dropped if n not in self._dropped_names]
                new = new[: max(0, MAX_LOGGED_DROPPED_NAMES - len(self._dropped_names))]
                self._dropped_names.update(new)
        if dropped and new:
            logger.warning(
                "Not a lake column (no prediction carries it, or the lake has %d feature columns): %s",
                self.max_feature_columns,
                ", ".join(new),
            )
        return kept

    def _buffer(self, rows: list[dict[str, Any]], on_durable: Callable[[], None] | None) -> None:
        """Add a message's rows; flush at once when the buffer reaches `flush_rows`."""
        if not rows:
            if on_durable is not None:  # its side-file records are written already
                _run(on_durable)
            return
        with self._lock:
            if not self._rows:
                self._oldest = self._clock()
            self._rows.extend(rows)
            if on_durable is not None:
                self._on_flushed.append(on_durable)
            self._stats["rows_received"] += len(rows)
            full = len(self._rows) >= self.flush_rows
        if full:
            self.flush()

    # -- writing --------------------------------------------------------------------------------

    def flush(self) -> list[Path]:
        """Write every buffered row to the lake now, then report their messages durable; return the files written.

        When rolling, the rows go to the open files and the files returned are those rolled.
        """
        with self._write_lock:
            with self._lock:
                rows, on_flushed, oldest = self._rows, self._on_flushed, self._oldest
                self._rows, self._on_flushed, self._oldest = [], [], None
            if not rows:
                return []
            unique = _unique_rows(rows)
            try:
                if self.roll_every_s is None:
                    written = append_to_lake(self.lake_dir, _frame(unique))
                else:
                    written = self._append_rolling(_frame(unique), on_flushed)
            except BaseException:
                with self._lock:  # back in front of what arrived meanwhile, for the next flush
                    self._rows, self._on_flushed = rows + self._rows, on_flushed + self._on_flushed
                    self._oldest = oldest
                raise
            with self._lock:
                self._stats["rows_written"] += len(unique)
                self._stats["duplicate_rows_dropped"] += len(rows) - len(unique)
                if self.roll_every_s is None:
                    self._stats["files_written"] += len(written)
        if self.roll_every_s is None:
            for on_durable in on_flushed:
                _run(on_durable)
        logger.debug("Flushed %d rows into %d lake file(s)", len(unique), len(written))
        return written

    def _append_rolling(self, frame: pd.DataFrame, on_flushed: list[Callable[[], None]]) -> list[Path]:
        """Append rows to each day's open file, rolling full or changed ones; return the files rolled (lock held)."""
        days = pd.to_datetime(frame[TS_COLUMN], utc=True).dt.strftime("%Y-%m-%d")
        parts = [(day, part) for day, part in frame.groupby(days, sort=True)]
        tables = [
            (day, pa.Table.from_pandas(part, preserve_index=False).replace_schema_metadata()) for day, part in parts
        ]
        # The messages of this flush are durable once every file their rows went to has rolled.
        countdown = _Countdown(len(tables), on_flushed)
        rolled: list[Path] = []
        for day, table in tables:
            current = self._open.get(day)
            if current is not None and not current.takes(table.schema):
                rolled.append(self._roll(day))  # a new column: the rest of the day goes to a new file
                current = None
            if current is None:
                folder = private_dir(private_dir(self.lake_dir) / f"date={day}")
                current = self._open[day] = _RollingFile(folder, table.schema, self._clock())
            try:
                current.write(table, countdown)
            except BaseException:
                # The open file may be damaged: drop it. Its earlier rows' messages were never
                # reported durable, so the journal upstream writes them again at the next start.
                self._open.pop(day).abandon()
                raise
            if current.bytes() >= self.roll_bytes:
                rolled.append(self._roll(day))
        return rolled

    def _roll(self, day: str) -> Path:
        """Close a day's open file, rename it into place and report its messages durable (write lock held)."""
        current = self._open.pop(day)
        path = current.close()
        with self._lock:
            self._stats["files_written"] += 1
        current.durable()
        return path

    def roll_due(self) -> list[Path]:
        """Roll the open files that have been open `roll_every_s`; return them."""
        if self.roll_every_s is None:
            return []
        with self._write_lock:
            now_s = self._clock()
            due = [day for day, f in self._open.items() if now_s - f.opened_s >= self.roll_every_s]
            return [self._roll(day) for day in due]

    def roll_now(self) -> list[Path]:
        """Roll every open file, whatever its age: its rows become visible now; return the files."""
        with self._write_lock:
            return [self._roll(day) for day in list(self._open)]

    def tick_once(self) -> None:
        """Flush rows that have waited `flush_every_s` and roll files open `roll_every_s` (the timer's work)."""
        with self._lock:
            due = self._oldest is not None and self._clock() - self._oldest >= self.flush_every_s
        if due:
            self.flush()
        self.roll_due()

    def _tick(self) -> None:
        """Run `tick_once` about every second, until closed."""
        interval = min(1.0, self.flush_every_s / 2, (self.roll_every_s or 2.0) / 2)
        while not self._closed.wait(interval):
            try:
                self.tick_once()
            except Exception:  # keep ticking: the next flush may succeed (disk full, ...)
                logger.exception("Lake flush failed; rows stay buffered until the next attempt")

    def _write_deadletter(self, record: Mapping[str, Any]) -> None:
        """Append a dead letter to today's `_deadletters` file."""
        self._append_jsonl(DEADLETTER_DIR, {"received_ts": _now_text(), **record})
        with self._lock:
            self._stats["deadletters"] += 1

    def _write_event(self, message: Message, body: Any) -> None:
        """Append a message that is not telemetry to today's `_events` file."""
        record = {
            "received_ts": _now_text(),
            "kind": message.kind,
            "source_module": message.connection_module_id,
            "output": message.output,
            "properties": dict(message.properties),
            "system_properties": dict(message.system_properties),
            "body": body,
        }
        self._append_jsonl(EVENTS_DIR, record)
        with self._lock:
            self._stats["events"] += 1

    def _append_jsonl(self, directory: str, record: Mapping[str, Any]) -> None:
        """Append one JSON line to `<lake>/<directory>/<today>.jsonl`."""
        folder = private_dir(self.lake_dir / directory)  # dead letters are readings too: 0700/0600
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        # One unbuffered write per line under a lock, so lines never interleave. A reader may still
        # catch a long line half-written: the lake's readers (edgefleet.lake.read_jsonl) take only
        # lines that end in a newline.
        with self._write_lock, open_private(folder / f"{datetime.now(UTC):%Y-%m-%d}.jsonl") as handle:
            handle.write(line)

    # -- lifecycle ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Return counters: messages (with IoT Hub's bytes and 4 KB units), rows, files, dead letters, events, drops."""
        with self._lock:
            return dict(self._stats)

    def healthy(self) -> bool:
        """Return whether the sink still takes messages."""
        return not self._closed.is_set()

    def close(self) -> None:
        """Stop the timer and write what is buffered."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._ticker.is_alive():
            self._ticker.join()
        self.flush()
        self.roll_now()

    def __enter__(self) -> LakeSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Countdown:
    """Run callbacks once `count` files have rolled."""

    def __init__(self, count: int, callbacks: list[Callable[[], None]]) -> None:
        self._left = count
        self._callbacks = callbacks
        self._lock = threading.Lock()

    def done(self) -> None:
        """Count one file rolled; run the callbacks at the last."""
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            for callback in self._callbacks:
                _run(callback)


class _RollingFile:
    """One day's open lake file: row groups appended under a temp name, renamed into place when rolled."""

    def __init__(self, folder: Path, schema: pa.Schema, opened_s: float) -> None:
        self.final = folder / f"part-{uuid.uuid4().hex}.parquet"
        self.tmp = folder / f"{ROLLING_PREFIX}{self.final.stem}.parquet.tmp"
        self.schema = schema
        self.opened_s = opened_s
        self._countdowns: list[_Countdown] = []
        open_private(self.tmp, "wb").close()  # created 0600 first: the writer below keeps the mode
        self._writer = pq.ParquetWriter(
            str(self.tmp), schema, compression="snappy", coerce_timestamps="us", allow_truncated_timestamps=True
        )

    def takes(self, schema: pa.Schema) -> bool:
        """Return whether rows of `schema` fit this file (its columns, same types, or nulls)."""
        mine = {field.name: field.type for field in self.schema}
        return all(
            field.name in mine and (field.type == mine[field.name] or pa.types.is_null(field.type)) for field in schema
        )

    def write(self, table: pa.Table, countdown: _Countdown) -> None:
        """Append rows as a row group; the countdown ticks when this file rolls."""
        present = set(table.column_names)
        columns = [
            table.column(f.name).cast(f.type) if f.name in present else pa.nulls(len(table), f.type)
            for f in self.schema
        ]
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self._countdowns.append(countdown)

    def bytes(self) -> int:
        """Return the bytes written so far (row groups are written as they come)."""
        try:
            return self.tmp.stat().st_size
        except OSError:
            return 0

    def close(self) -> Path:
        """Finish the file and rename it into place; return its path."""
        self._writer.close()
        self.tmp.replace(self.final)
        return self.final

    def durable(self) -> None:
        """Tell the messages whose rows are in this (rolled) file."""
        for countdown in self._countdowns:
            countdown.done()

    def abandon(self) -> None:
        """Drop a file a write failed on (its messages are not reported durable)."""
        try:
            self._writer.close()
        except Exception:  # already broken
            logger.debug("Closing a failed rolling file %s", self.tmp, exc_info=True)
        self.tmp.unlink(missing_ok=True)


def _remove_abandoned_rolling_files(lake_dir: Path) -> None:
    """Delete the open files a killed sink left (the journal upstream writes their rows again)."""
    for path in Path(lake_dir).glob(f"date=*/{ROLLING_PREFIX}*.tmp"):
        logger.info("Removing %s, the open file of a sink that stopped without closing it", path)
        path.unlink(missing_ok=True)


def _unique_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the rows without repeats of a (device_id, seq, source_module) (a redelivery), first kept."""
    seen: set[tuple[Any, Any, Any]] = set()
    unique = []
    for row in rows:
        key = (row["device_id"], row["seq"], row[SOURCE_COLUMN])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def _run(on_durable: Callable[[], None]) -> None:
    """Run a durability callback; its failure is logged, never the writer's."""
    try:
        on_durable()
    except Exception:
        logger.exception("A lake sink durability callback failed")


def _row(
    reading: Reading, item: Mapping[str, Any], module: str, features: Iterable[tuple[str, float]]
) -> dict[str, Any]:
    """Return the flat lake row of a parsed telemetry or prediction object with the given feature columns."""
    row: dict[str, Any] = {"device_id": reading.device_id, "seq": reading.seq, "ts": reading.ts}
    row.update(features)
    row["label"] = math.nan if reading.label is None else reading.label
    prediction = item.get("prediction")
    if isinstance(prediction, dict):
        for key, value in prediction.items():
            row[f"prediction_{key}"] = value
    edge = item.get("edge")
    if isinstance(edge, dict):
        for key, value in edge.items():
            # `edge.edge_device` becomes `edge_device`, not `edge_edge_device`.
            row[key if key.startswith("edge_") else f"edge_{key}"] = value
    row[SOURCE_COLUMN] = module
    return row


def _message_columns(message: Message) -> dict[str, Any]:
    """Return the lake columns of the message that carries rows: its ids and application properties."""
    system = {key.lower(): value for key, value in message.system_properties.items()}
    return {
        "message_id": system.get("messageid"),
        "correlation_id": system.get("correlationid"),
        "properties": json.dumps(dict(message.properties), ensure_ascii=False, sort_keys=True),
    }


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Build the lake frame with stable dtypes for the bookkeeping columns."""
    frame = pd.DataFrame.from_records(rows)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["seq"] = frame["seq"].astype("int64")
    frame["label"] = pd.to_numeric(frame["label"], errors="coerce").astype("float64")
    for column, dtype in {**PREDICTION_COLUMNS, **EDGE_COLUMNS, **MESSAGE_COLUMNS}.items():
        values = frame[column] if column in frame else pd.Series([None] * len(frame), index=frame.index)
        if dtype == "float64":
            frame[column] = pd.to_numeric(values, errors="coerce").astype("float64")
        elif dtype == "datetime":
            frame[column] = pd.to_datetime(values, utc=True, errors="coerce")
        else:
            # An all-null object column would be written with parquet type `null`; keep it a string.
            frame[column] = values.astype("string")
    frame[SOURCE_COLUMN] = frame[SOURCE_COLUMN].astype("string")
    fixed = ["device_id", "seq", "ts", "label", *BOOKKEEPING_COLUMNS]
    features = [column for column in frame.columns if column not in fixed]
    extras = [column for column in features if column.startswith(("prediction_", "edge_"))]
    features = [column for column in features if column not in extras]
    return frame[["device_id", "seq", "ts", *features, "label", *BOOKKEEPING_COLUMNS, *extras]]


def _body_for_record(message: Message) -> Any:
    """Return a body for a JSON Lines record: parsed JSON (opened if compressed) when it is JSON, else text."""
    try:
        body = open_body(message.body, message.system_properties)
    except MessageError:
        body = message.body
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:
        return payload_text(body)


def _now_text() -> str:
    """Return the current UTC time as the contracts write it."""
    return format_ts(datetime.now(UTC))
