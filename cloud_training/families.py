"""Candidate model families, each sized for an edge device."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import sklearn
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cloud_training.fast_paths import install_fast_paths


def _ridge(seed: int) -> Any:
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0))


def _random_forest(seed: int) -> Any:
    # Bounded leaves keep a forest around 20 KB instead of sklearn's multi-MB default.
    return RandomForestRegressor(n_estimators=16, max_leaf_nodes=32, min_samples_leaf=3, n_jobs=1, random_state=seed)


def _gradient_boosting(seed: int) -> Any:
    return GradientBoostingRegressor(n_estimators=60, max_depth=3, learning_rate=0.1, subsample=0.9, random_state=seed)


# The fleet model's candidates are fitted on the driver on pooled rows of every device, sized to
# fit in ~1.5 s each on 20k rows while the executors wait; one file serves the whole fleet.
def _fleet_gradient_boosting(seed: int) -> Any:
    return GradientBoostingRegressor(n_estimators=80, max_depth=4, learning_rate=0.1, subsample=0.5, random_state=seed)


def _fleet_random_forest(seed: int) -> Any:
    return RandomForestRegressor(n_estimators=24, max_leaf_nodes=256, min_samples_leaf=5, n_jobs=1, random_state=seed)


FAMILIES: dict[str, Callable[[int], Any]] = {
    "ridge": _ridge,
    "random_forest": _random_forest,
    "gradient_boosting": _gradient_boosting,
}
FLEET_FAMILIES: dict[str, Callable[[int], Any]] = {
    **FAMILIES,
    "fleet_ridge": _ridge,
    "fleet_random_forest": _fleet_random_forest,
    "fleet_gradient_boosting": _fleet_gradient_boosting,
}
# What the fleet model is chosen from (each converts to ONNX).
FLEET_CANDIDATES = ("fleet_ridge", "fleet_random_forest", "fleet_gradient_boosting")


def trusted_fitting() -> AbstractContextManager[None]:
    """Return a context that fits these families without scikit-learn's per-call parameter validation.

    Only for the fixed parameters above, which `tests/cloud_training/test_families.py` validates.
    Gradient boosting re-validates its parameters on every one of its trees: 11% of a device's CPU,
    for bit-identical predictions. Input checks stay on: they refuse a finite reading that overflows
    float32 (`1e300`), which `assume_finite` would let train. The trees' per-tree overheads (their
    sample-weight check, a new random state per tree, parameter names read by signature on every
    clone, boosting's per-stage loss average) take fast paths with the same answers (`fast_paths.py`).
    """
    install_fast_paths()
    return sklearn.config_context(skip_parameter_validation=True)


def make_estimator(family: str, seed: int) -> Any:
    """Return an unfitted estimator of `family`."""
    try:
        return FLEET_FAMILIES[family](seed)
    except KeyError:
        raise ValueError(f"Unknown model family {family!r}; choose from {', '.join(FLEET_FAMILIES)}") from None
