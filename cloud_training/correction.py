"""Partial pooling: a device's own small correction to the fleet model, shrunk toward zero.

prediction = fleet(x) + intercept + coef . x, with (intercept, coef) a ridge fit on the device's
residuals against the fleet model. The penalty is `prior_rows` on the standardised features and
on the offset alike, so a correction moves halfway to what the device's own rows say once it has
`prior_rows` rows of evidence (offset: n / (n + prior_rows) of the mean residual): a device with
few rows stays near the fleet model, a device with many gets its own offset and slopes.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgefleet.bundle import CorrectedModel, Correction

__all__ = ["apply_correction", "corrected_model", "correction_from_json", "correction_to_json", "fit_correction"]


def fit_correction(x: np.ndarray, residual: np.ndarray, prior_rows: float) -> Correction:
    """Return the shrunk linear correction of `residual` (= label - fleet prediction) on `x`."""
    n, n_features = x.shape
    if n == 0 or not np.isfinite(residual).all():
        return Correction(intercept=0.0, coef=(0.0,) * n_features)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = (x - mean) / scale  # centred: the offset and the slopes are estimated apart
    offset = float(residual.sum()) / (n + prior_rows)
    gram = z.T @ z + prior_rows * np.eye(n_features)
    # Least squares, min-norm: a constant feature (all-zero column, no prior) gets slope 0, not a singular matrix.
    slopes = np.linalg.lstsq(gram, z.T @ (residual - residual.mean()), rcond=None)[0]
    coef = slopes / scale
    intercept = offset - float(coef @ mean)
    if not (np.isfinite(coef).all() and np.isfinite(intercept)):
        return Correction(intercept=0.0, coef=(0.0,) * n_features)
    return Correction(intercept=intercept, coef=tuple(float(c) for c in coef))


def apply_correction(correction: Correction, x: np.ndarray, fleet_prediction: np.ndarray) -> np.ndarray:
    """Return the fleet prediction plus the correction."""
    return fleet_prediction + correction.intercept + x @ np.asarray(correction.coef, dtype=float)


def corrected_model(fleet: Any, correction: Correction) -> CorrectedModel:
    """Return the fleet model plus `correction` as the edge serves it (`edgefleet.bundle.CorrectedModel`)."""
    return CorrectedModel(fleet, correction.intercept, np.asarray(correction.coef, dtype=float))


def correction_to_json(correction: Correction) -> str:
    """Return the correction as the results table's JSON text."""
    return json.dumps({"intercept": correction.intercept, "coef": list(correction.coef)}, separators=(",", ":"))


def correction_from_json(text: str) -> Correction:
    """Parse a correction written by `correction_to_json`."""
    data = json.loads(text)
    return Correction(intercept=float(data["intercept"]), coef=tuple(float(c) for c in data["coef"]))
