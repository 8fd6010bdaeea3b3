"""Batch prediction over a bundle: each row by its device's model, or the fleet model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from edgefleet.bundle import BundleReader, usable_values
from edgefleet.history import DEVICE_COLUMN


def predict_frame(reader: BundleReader, frame: pd.DataFrame) -> pd.DataFrame:
    """Return `value`, `model` and `fallback_reason` for each row, in input order."""
    x = frame[list(reader.features)].to_numpy(dtype=float)
    values = np.empty(len(frame))
    kinds = np.empty(len(frame), dtype=object)
    reasons = np.empty(len(frame), dtype=object)
    device_ids = frame[DEVICE_COLUMN].astype(str).to_numpy()
    for device_id, positions in pd.Series(np.arange(len(frame))).groupby(device_ids).groups.items():
        idx = np.asarray(positions)
        values[idx], route = reader.predict(str(device_id), x[idx])
        complete = np.asarray(usable_values(x[idx]).all(axis=1), dtype=bool)
        kinds[idx] = [route.kind if ok else "fleet" for ok in complete]
        reasons[idx] = [route.fallback_reason if ok else "missing_features" for ok in complete]
    return pd.DataFrame({"value": values, "model": kinds, "fallback_reason": reasons}, index=frame.index)
