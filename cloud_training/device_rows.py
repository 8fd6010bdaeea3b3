"""A device's frame as the arrays training reads: float values, UTC instants, seconds since the epoch.

The gates and the time split of `prepare_device` need three arrays from a frame of ~500 rows, and
pandas spends ~2-3 ms making them (column lookup, `to_datetime`, boolean indexing, timedelta
arithmetic, each ~50-150 us), paid twice per device: once in the fleet sample pass, once in the
device pass. Frames as the readers make them (numeric columns, a datetime column) take a numpy
path with the same numbers: seconds are computed as pandas computes them (nanoseconds since the
epoch over 1e9), and an instant nanoseconds cannot hold goes to pandas, which raises its own
error. Any other frame (text timestamps, nullable or object columns) goes through pandas as
before. `tests/cloud_training/test_device_rows.py` holds both to the same arrays.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from edgefleet.history import TS_COLUMN

__all__ = ["device_arrays", "epoch_seconds"]

_EPOCH = pd.Timestamp(0, tz="UTC")
_NS_PER_S = 1e9


def device_arrays(frame: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return `columns` as one float array (rows x columns) and the timestamps as UTC datetime64 (NaT where missing)."""
    ts = frame[TS_COLUMN]
    if pd.api.types.is_datetime64_any_dtype(ts.dtype) and all(_plain_number(frame[c].dtype) for c in columns):
        values = np.empty((len(frame), len(columns)), dtype=float)
        for i, column in enumerate(columns):
            values[:, i] = frame[column].to_numpy()
    else:
        values = frame[columns].to_numpy(dtype=float)
        # cache=False: the cache first scans the column for repeats, which device timestamps never have.
        ts = pd.to_datetime(ts, utc=True, cache=False)
    # A tz-aware column's plain to_numpy() makes one Timestamp object per row; as datetime64 it is one copy.
    return values, ts.to_numpy(dtype=f"datetime64[{ts.dt.unit}]")


def _plain_number(dtype: object) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind in "fiu"


def epoch_seconds(stamps: np.ndarray) -> np.ndarray:
    """Return UTC datetime64 instants (no NaT) as seconds since the epoch, as pandas' timedelta division gives them."""
    nanoseconds = stamps.astype("datetime64[ns]")
    if not np.array_equal(nanoseconds.astype(stamps.dtype), stamps):  # out of nanosecond range: pandas raises
        series = pd.Series(stamps).dt.tz_localize("UTC")
        return ((series - _EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)
    return nanoseconds.view("int64") / _NS_PER_S
