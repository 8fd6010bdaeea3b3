"""The telemetry lake: parquet files partitioned by UTC day, one flat row per reading.

Layout: `<lake>/date=YYYY-MM-DD/part-<uuid>.parquet`. Columns: `device_id`, `seq`, `ts`,
one column per feature (named as in the reading), `label` (NaN when absent), and, for
enriched readings, `prediction_*` and `edge_*` columns. Training reads it directly.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd

from edgefleet.history import TS_COLUMN


def append_to_lake(lake_dir: Path, rows: pd.DataFrame) -> list[Path]:
    """Append rows to the lake, one new file per day, each written atomically."""
    if rows.empty:
        return []
    ts = pd.to_datetime(rows[TS_COLUMN], utc=True)
    written = []
    for day, part in rows.groupby(ts.dt.strftime("%Y-%m-%d"), sort=True):
        day_dir = lake_dir / f"date={day}"
        day_dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = day_dir / f".{name}.tmp"  # dot-prefixed: readers skip it until renamed
        part.to_parquet(tmp, index=False, coerce_timestamps="us", allow_truncated_timestamps=True)
        final = day_dir / name
        tmp.replace(final)
        written.append(final)
    return written
