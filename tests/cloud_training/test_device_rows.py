"""A device's frame becomes the same arrays on the numpy path as through pandas, whatever its columns hold."""

import re

import numpy as np
import pandas as pd
import pytest

from cloud_training.device_rows import device_arrays, epoch_seconds
from edgefleet.history import TS_COLUMN

pytestmark = pytest.mark.fast

COLUMNS = ["temp_c", "load", "power_w"]
STAMPS_US = np.array([1_700_000_030_000_001, 1_700_000_000_000_000, 1_700_000_060_123_456, 1_699_999_970_000_999])


def through_pandas(frame, columns):
    """What training computed before the numpy path: values, the good rows, and their seconds in time order."""
    values = frame[columns].to_numpy(dtype=float)
    ts = pd.to_datetime(frame[TS_COLUMN], utc=True, cache=False)
    good = np.isfinite(values).all(axis=1) & ts.notna().to_numpy()
    order = np.argsort(ts[good].to_numpy(dtype=f"datetime64[{ts.dt.unit}]"), kind="stable")
    seconds = ((ts[good] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)[order]
    return values[good][order].tolist(), seconds.tolist()


def through_arrays(frame, columns):
    values, stamps = device_arrays(frame, columns)
    good = np.isfinite(values).all(axis=1) & ~np.isnat(stamps)
    order = np.argsort(stamps[good], kind="stable")
    return values[good][order].tolist(), epoch_seconds(stamps[good])[order].tolist()


def answer(compute, frame):
    try:
        return compute(frame, COLUMNS)
    except Exception as err:  # the answer compared is the error itself
        return ("raises", type(err), re.sub(r" at 0x[0-9a-fA-F]+", "", str(err)))


def frame_with(ts, **columns):
    base = {"temp_c": [20.5, 21.0, np.nan, 19.25], "load": [0.5, 0.25, 0.75, 1.0], "power_w": [3.0, 2.5, 4.0, 1.5]}
    return pd.DataFrame({TS_COLUMN: ts, **base, **columns})


def utc(unit):
    return pd.Series(pd.to_datetime(STAMPS_US, unit="us", utc=True)).dt.as_unit(unit)


FRAMES = {
    "UTC microseconds (the local reader)": lambda: frame_with(utc("us")),
    "UTC nanoseconds (Arrow from Spark)": lambda: frame_with(utc("ns")),
    "UTC milliseconds": lambda: frame_with(utc("ms")),
    "UTC seconds": lambda: frame_with(utc("s")),
    "another time zone": lambda: frame_with(utc("us").dt.tz_convert("Europe/Berlin")),
    "naive datetimes": lambda: frame_with(utc("us").dt.tz_localize(None)),
    "a missing timestamp": lambda: frame_with(pd.Series([*utc("us")[:3], pd.NaT], dtype="datetime64[us, UTC]")),
    "an integer column": lambda: frame_with(utc("us"), load=[1, 2, 3, 4]),
    "a nullable integer column": lambda: frame_with(utc("us"), load=pd.array([1, None, 3, 4], dtype="Int64")),
    "an infinite value": lambda: frame_with(utc("us"), power_w=[np.inf, 2.5, 4.0, 1.5]),
    "text timestamps": lambda: frame_with([str(t) for t in utc("us")]),
    "epoch numbers": lambda: frame_with([1.7e9, 1.7e9 + 30, 1.7e9 + 60, 1.7e9 - 30]),
    "a year of random microsecond stamps": lambda: pd.DataFrame(
        {
            TS_COLUMN: pd.Series(np.random.default_rng(1).integers(1.6e15, 1.7e15, 5_000))
            .astype("datetime64[us]")
            .dt.tz_localize("UTC"),
            **{column: np.random.default_rng(2).normal(size=5_000) for column in COLUMNS},
        }
    ),
    "after 2262 in microseconds": lambda: frame_with(
        pd.Series(
            np.array(["2300-01-01", "2024-01-01", "2024-01-02", "2024-01-03"], dtype="datetime64[us]")
        ).dt.tz_localize("UTC")
    ),
    "before 1677 in seconds": lambda: frame_with(
        pd.Series(
            np.array(["1500-06-01", "2024-01-01", "2024-01-02", "2024-01-03"], dtype="datetime64[s]")
        ).dt.tz_localize("UTC")
    ),
}


@pytest.mark.parametrize("case", sorted(FRAMES))
def test_the_arrays_are_what_pandas_made(case):
    assert answer(through_arrays, FRAMES[case]()) == answer(through_pandas, FRAMES[case]())


def test_a_frame_as_the_readers_make_it_takes_the_numpy_path(monkeypatch):
    frame = FRAMES["UTC microseconds (the local reader)"]()
    monkeypatch.setattr(pd, "to_datetime", lambda *a, **k: pytest.fail("pandas parsed a datetime column"))

    values, stamps = device_arrays(frame, COLUMNS)

    assert values.shape == (4, 3) and stamps.dtype == np.dtype("datetime64[us]")


def test_seconds_keep_the_microseconds_a_reading_was_stamped_with():
    stamps = np.array(["2024-03-01T12:00:00.000001"], dtype="datetime64[us]")

    assert epoch_seconds(stamps)[0] == pytest.approx(1_709_294_400.000001, abs=1e-6)
