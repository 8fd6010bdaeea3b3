"""Replay recorded readings (CSV or JSON Lines) as field devices would send them.

Rows need `device_id` and `ts` (ISO-8601, or epoch seconds/ms/µs/ns); `seq` is optional (per
device from 0 in file order when absent); `label` is optional. Features are the other numeric
columns (the same rule as `edgefleet.history`), or a JSON Lines row's `features` object when it
is a telemetry message. Values are sent as recorded: an empty cell leaves the feature out, a
recorded NaN is sent as NaN. A reading is `complete` when it has every `simulator.physics`
feature (what the bundle's models take), as for simulated readings. Offsets are seconds after
the first row's `ts`, so the publisher can keep the original pacing (× speed). Only the
standard library is used: no pandas.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgefleet.field import FIELD_TOPIC_TEMPLATE
from edgefleet.messages import RESERVED_FEATURE_NAMES, RESERVED_FEATURE_PREFIXES, TELEMETRY_SCHEMA
from simulator.errors import SimulatorError
from simulator.physics import FEATURES
from simulator.stream import Emission

__all__ = ["REPLAY_SUFFIXES", "read_replay"]

REPLAY_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}
# Columns that are never features, as in edgefleet.history (plus the sensor's receive stamp).
_NOT_FEATURES = RESERVED_FEATURE_NAMES | {"received_ts", "features"}
# Epoch numbers: the unit is guessed from the magnitude, as edgefleet.history reads them.
_EPOCH_UNITS = ((10**17, 10**9), (10**14, 10**6), (10**11, 10**3))


class _ReplayError(SimulatorError):
    """Raise for a row that cannot be replayed, naming the file and line."""


def read_replay(path: Path, *, topic_template: str = FIELD_TOPIC_TEMPLATE) -> Iterator[Emission]:
    """Yield one Emission per recorded row, in file order, offset by its `ts` from the first row's."""
    path = Path(path)
    kind = REPLAY_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SimulatorError(f"cannot replay {path}: use a .csv or .jsonl file (got {path.suffix or 'no suffix'!r})")
    if not path.is_file():
        raise SimulatorError(f"replay file not found: {path}")
    rows = _csv_rows(path) if kind == "csv" else _json_rows(path)
    return _emissions(path, rows, topic_template)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        yield from enumerate(reader, start=2)


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)  # accepts NaN: a recorded NaN is replayed as one
            except json.JSONDecodeError as err:
                raise _ReplayError(f"{path}:{line}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise _ReplayError(f"{path}:{line}: expected a JSON object per line")
            yield line, row


def _emissions(path: Path, rows: Iterator[tuple[int, dict[str, Any]]], topic_template: str) -> Iterator[Emission]:
    from_json = REPLAY_SUFFIXES[path.suffix.lower()] == "json"
    next_seq: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    first_ts_s: float | None = None
    for line, row in rows:
        where = f"{path}:{line}"
        device_id = row.get("device_id")
        if not isinstance(device_id, str) or not device_id:
            raise _ReplayError(f"{where}: needs a device_id")
        ts = _timestamp(row.get("ts"), where)
        seq = _seq(row.get("seq"), where)
        if seq is None:
            seq = next_seq.get(device_id, 0)
        next_seq[device_id] = seq + 1
        features, complete, valid = _features(row, where, from_json)
        label = _optional_number(row.get("label"), "label", where)
        obj: dict[str, Any] = {
            "schema": TELEMETRY_SCHEMA,
            "device_id": device_id,
            "seq": seq,
            "ts": _format_ts(ts),
            "features": features,
        }
        if label is not None:
            obj["label"] = label
            valid = valid and math.isfinite(label)
        payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        ts_s = ts.timestamp()
        if first_ts_s is None:
            first_ts_s = ts_s
        device_seqs = seen.setdefault(device_id, set())
        duplicate = seq in device_seqs
        device_seqs.add(seq)
        topic = topic_template.format(device_id=device_id)
        yield Emission(ts_s - first_ts_s, device_id, seq, topic, payload, duplicate, (), valid, complete)


def _format_ts(ts: datetime) -> str:
    """Format a UTC time as ISO-8601 with Z, as precise as it is (seconds, ms or µs)."""
    if not ts.microsecond:
        spec = "seconds"
    elif ts.microsecond % 1000 == 0:
        spec = "milliseconds"
    else:
        spec = "microseconds"
    return ts.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _timestamp(value: object, where: str) -> datetime:
    number: int | float
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            number = int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:
            try:
                ts = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
            except ValueError:
                raise _ReplayError(f"{where}: ts {text!r} is neither ISO-8601 nor an epoch number") from None
            # A timestamp without a zone is read as UTC, as edgefleet.history does.
            return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    else:
        raise _ReplayError(f"{where}: needs a ts (ISO-8601 or epoch seconds)")
    if not math.isfinite(number):
        raise _ReplayError(f"{where}: ts {value!r} is not a time")
    per_second = next((per_second for threshold, per_second in _EPOCH_UNITS if abs(number) >= threshold), 1)
    try:
        if isinstance(number, int):  # exact: epoch ms/µs/ns as a float would lose the last digits
            seconds, rest = divmod(number, per_second)
            return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=rest * 1_000_000 // per_second)
        return datetime.fromtimestamp(number / per_second, UTC)
    except (OverflowError, OSError, ValueError):
        raise _ReplayError(f"{where}: ts {value!r} is out of range") from None


def _seq(value: object, where: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        raise _ReplayError(f"{where}: seq {value!r} is not an integer") from None
    if isinstance(number, bool) or not isinstance(number, int | float) or not float(number).is_integer() or number < 0:
        raise _ReplayError(f"{where}: seq {value!r} is not a non-negative integer")
    return int(number)


def _optional_number(value: object, name: str, where: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _ReplayError(f"{where}: {name} {value!r} is not a number")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        hint = "" if name == "label" else "; drop non-numeric columns from the file"
        raise _ReplayError(f"{where}: {name} {value!r} is not a number{hint}") from None


def _features(row: dict[str, Any], where: str, from_json: bool) -> tuple[dict[str, float], bool, bool]:
    """Return the row's features, whether it has every physics feature, and whether all are finite."""
    nested = row.get("features")
    if isinstance(nested, dict):
        items = list(nested.items())
    else:
        # A JSON row's string values are labels of some kind (site, model), not features; in CSV
        # every cell is a string, so there a column must hold numbers (or be empty).
        items = [
            (name, value)
            for name, value in row.items()
            if name not in _NOT_FEATURES
            and not name.startswith(RESERVED_FEATURE_PREFIXES)
            and not (from_json and isinstance(value, str))
        ]
    features: dict[str, float] = {}
    for name, value in items:
        number = _optional_number(value, f"feature {name!r}", where)
        if number is not None:  # an empty cell: the device did not send that feature
            features[name] = number
    if not features:
        raise _ReplayError(f"{where}: no feature values (numeric columns other than device_id, ts, seq, label)")
    # Complete as the simulator means it: every physics feature (what the bundle's models take) is there.
    complete = all(name in features for name in FEATURES)
    return features, complete, all(math.isfinite(value) for value in features.values())
