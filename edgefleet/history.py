"""Fleet history: its columns, and how it is read (parquet, CSV, JSON Lines, the lake) and written.

The simulator generates seeded histories in this format (`simulator.history`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from edgefleet.errors import HistoryError
from edgefleet.messages import RESERVED_FEATURE_NAMES, RESERVED_FEATURE_PREFIXES

logger = logging.getLogger(__name__)

DEVICE_COLUMN = "device_id"
TS_COLUMN = "ts"
LABEL_COLUMN = "label"
# Columns that are never model features, even when numeric (lake bookkeeping): defined once.
RESERVED_COLUMNS = RESERVED_FEATURE_NAMES
RESERVED_PREFIXES = RESERVED_FEATURE_PREFIXES


def write_history(frame: pd.DataFrame, out: Path) -> Path:
    """Write history as parquet (atomically) and return the path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    frame.to_parquet(tmp, index=False, coerce_timestamps="us", allow_truncated_timestamps=True)
    tmp.replace(out)
    return out


def history_format(path: Path) -> str:
    """Return the format of a history source: `parquet`, `csv`, `json` or `lake`."""
    if not path.exists():
        raise HistoryError(f"History not found: {path}. Pass a parquet/CSV/JSON Lines file or a lake directory.")
    if path.is_dir():
        if any(p.is_dir() and p.name.startswith("date=") for p in path.iterdir()):
            return "lake"
        suffixes = {p.suffix.lower() for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))}
        for fmt, known in (("parquet", {".parquet"}), ("csv", {".csv"}), ("json", {".jsonl", ".json"})):
            if suffixes and suffixes <= known:
                return fmt
        raise HistoryError(
            f"Cannot tell the format of directory {path} (found {sorted(suffixes) or 'no files'}); "
            "use one format per directory: .parquet, .csv or .jsonl"
        )
    suffix = path.suffix.lower()
    formats = {
        ".parquet": "parquet",
        ".pq": "parquet",
        ".csv": "csv",
        ".jsonl": "json",
        ".json": "json",
        ".ndjson": "json",
    }
    if suffix not in formats:
        raise HistoryError(f"Unknown history file type {suffix!r} for {path}; use .parquet, .csv or .jsonl")
    return formats[suffix]


def infer_features(columns: Sequence[str], numeric: Sequence[str]) -> tuple[str, ...]:
    """Return the feature columns: numeric columns that are not reserved bookkeeping."""
    numeric_set = set(numeric)
    features = tuple(
        c for c in columns if c in numeric_set and c not in RESERVED_COLUMNS and not c.startswith(RESERVED_PREFIXES)
    )
    if not features:
        raise HistoryError(
            "History has no numeric feature columns besides device_id, ts and label; "
            "add feature columns or name them with --features"
        )
    return features


def check_columns(columns: Sequence[str], features: Sequence[str] | None) -> None:
    """Raise a HistoryError naming what is missing when required columns are absent."""
    required = [DEVICE_COLUMN, TS_COLUMN, LABEL_COLUMN, *(features or ())]
    missing = [c for c in required if c not in columns]
    if missing:
        raise HistoryError(
            f"History lacks column(s) {', '.join(missing)}; it has {', '.join(columns)}. "
            "Training needs device_id, ts, label and the feature columns."
        )


def read_history(path: Path, features: Sequence[str] | None = None) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Read a history source into pandas with normalised dtypes; return it and its features."""
    fmt = history_format(path)
    try:
        if fmt in ("parquet", "lake"):
            frame = pd.read_parquet(path)
        elif fmt == "csv":
            files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
            frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
        else:
            files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json")) if path.is_dir() else [path]
            frame = pd.concat([pd.read_json(f, lines=True) for f in files], ignore_index=True)
    except (OSError, ValueError) as err:
        raise HistoryError(f"Cannot read {fmt} history {path}: {err}") from err
    check_columns(list(frame.columns), features)
    if features is None:
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        features = infer_features(list(frame.columns), numeric)
    frame = frame[[DEVICE_COLUMN, TS_COLUMN, *features, LABEL_COLUMN]].copy()
    frame[DEVICE_COLUMN] = frame[DEVICE_COLUMN].astype(str)
    frame[TS_COLUMN] = pd.to_datetime(frame[TS_COLUMN], utc=True, errors="coerce")
    for column in (*features, LABEL_COLUMN):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame, tuple(features)
