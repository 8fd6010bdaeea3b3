"""Partial pooling: a device's own offset to the fleet model, shrunk toward zero.

prediction = fleet(x) + intercept, with the intercept the device's mean residual against the
fleet model shrunk by `prior_rows`: a correction moves halfway to what the device's own rows say
once it has `prior_rows` rows of evidence (n / (n + prior_rows) of the mean residual), so a
device with few rows stays near the fleet model. The bundle's `Correction` also carries slopes
(`coef`, served at the edge), but training fits none: a slope fitted on a device's few recent
rows extrapolates once its features leave that range, and on issue 16's storms fleet the
corrections with slopes made the final-slice error twice the fleet model's (`benchmarks/
model_quality.py`: corrected MSE 126 vs 59.6 with the offset alone, fleet 59.4).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgefleet.bundle import CorrectedModel, Correction

__all__ = ["apply_correction", "corrected_model", "correction_from_json", "correction_to_json", "fit_correction"]


def fit_correction(x: np.ndarray, residual: np.ndarray, prior_rows: float) -> Correction:
    """Return the shrunk offset of `residual` (= label - fleet prediction); `x` gives the feature count."""
    n, n_features = x.shape
    no_slopes = (0.0,) * n_features
    if n == 0 or not np.isfinite(residual).all():
        return Correction(intercept=0.0, coef=no_slopes)
    offset = float(residual.sum()) / (n + prior_rows)
    return Correction(intercept=offset if np.isfinite(offset) else 0.0, coef=no_slopes)


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
