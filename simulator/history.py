"""Seeded synthetic fleet history, sampled from the simulator's device physics.

`edgefleet generate-history`, the demo and the benchmarks write it; it has the columns of
`edgefleet.history`, so training reads it like any real history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from edgefleet.errors import HistoryError
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN
from simulator.physics import FEATURES, device_ids, device_seed, make_profile

__all__ = ["DATA_FAULTS", "HistorySpec", "apply_data_fault", "device_history", "generate_history"]

DATA_FAULTS: tuple[str, ...] = ("few_rows", "nan_labels", "constant_label", "stale", "broken_sensor")


@dataclass(frozen=True)
class HistorySpec:
    """What `generate_history` produces."""

    n_devices: int
    rows_per_device: int
    seed: int = 0
    interval_s: float = 300.0
    end_ts: str = "2026-11-01T00:00:00Z"
    bad_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.n_devices < 1:
            raise HistoryError("--devices must be at least 1")
        if self.rows_per_device < 1:
            raise HistoryError("--rows must be at least 1")
        if not 0.0 <= self.bad_fraction <= 1.0:
            raise HistoryError("--bad-fraction must be between 0 and 1")
        if self.interval_s <= 0:
            raise HistoryError("--interval-s must be positive")


def device_history(device_id: str, seed: int, n_rows: int, end_ts_s: float, interval_s: float) -> pd.DataFrame:
    """Return one healthy device's history: `n_rows` readings ending at `end_ts_s`."""
    profile = make_profile(device_id, seed)
    rng = np.random.default_rng(device_seed(seed, device_id) ^ 0x5EED)
    ts_s = end_ts_s - interval_s * np.arange(n_rows - 1, -1, -1, dtype=float)
    x = profile.features(ts_s, rng)
    frame = pd.DataFrame(x, columns=list(FEATURES))
    frame.insert(0, TS_COLUMN, pd.to_datetime(ts_s, unit="s", utc=True))
    frame.insert(0, DEVICE_COLUMN, device_id)
    frame[LABEL_COLUMN] = profile.label(x, rng)
    return frame


def apply_data_fault(frame: pd.DataFrame, fault: str, rng: np.random.Generator) -> pd.DataFrame:
    """Return `frame` damaged the way field devices damage their data."""
    frame = frame.copy()
    if fault == "few_rows":
        return frame.tail(3).reset_index(drop=True)
    if fault == "nan_labels":
        frame.loc[rng.random(len(frame)) < 0.6, LABEL_COLUMN] = np.nan
    elif fault == "constant_label":
        frame[LABEL_COLUMN] = float(frame[LABEL_COLUMN].iloc[0])
    elif fault == "stale":
        frame[TS_COLUMN] = frame[TS_COLUMN] - pd.Timedelta(days=90)
    elif fault == "broken_sensor":
        # Finite but absurd readings: passes NaN/inf checks, breaks the fit itself.
        frame[FEATURES[0]] = 1e300
    else:
        raise HistoryError(f"Unknown data fault {fault!r}; use one of {', '.join(DATA_FAULTS)}")
    return frame


def generate_history(spec: HistorySpec) -> pd.DataFrame:
    """Return a seeded fleet history; a `bad_fraction` of devices get a data fault."""
    end_ts_s = pd.Timestamp(spec.end_ts).timestamp()
    fault_rng = np.random.default_rng(spec.seed + 1)
    frames = []
    for device_id in device_ids(spec.n_devices):
        frame = device_history(device_id, spec.seed, spec.rows_per_device, end_ts_s, spec.interval_s)
        if fault_rng.random() < spec.bad_fraction:
            fault = DATA_FAULTS[int(fault_rng.integers(len(DATA_FAULTS)))]
            frame = apply_data_fault(frame, fault, fault_rng)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
