"""The fleet model: one model over all devices' training rows, the fallback on the edge.

Its rows come back from the same Spark pass that trains the devices (each device sends
a seeded sample of its training split), and every device is then judged against it on
its own hold-out in one vectorised predict on the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cloud_training.device_training import (
    TrainingConfig,
    decode_rows,
    dump_joblib,
    gate_stale_devices,
    holdout_metrics,
    judge,
    results_frame,
    to_onnx_bytes,
    train_device,
)
from cloud_training.families import make_estimator
from edgefleet.bundle import FeatureStats

logger = logging.getLogger(__name__)

FLEET_FAMILY = "fleet_gradient_boosting"


@dataclass(frozen=True)
class FleetModel:
    """The fitted fleet model and its serialised forms."""

    model: Any
    family: str
    n_train: int
    joblib_blob: bytes
    onnx_blob: bytes | None
    feature_stats: dict[str, FeatureStats]


def train_fleet(rows: np.ndarray, config: TrainingConfig) -> FleetModel:
    """Fit the fleet model on pooled rows (features then label); raise ValueError when too few."""
    if rows.shape[0] < config.min_rows:
        raise ValueError(
            f"only {rows.shape[0]} usable training rows across the fleet; the fleet model needs {config.min_rows}"
        )
    x, y = rows[:, :-1], rows[:, -1]
    model = make_estimator(FLEET_FAMILY, config.seed)
    model.fit(x, y)
    onnx_blob = None
    if config.onnx:
        try:
            onnx_blob = to_onnx_bytes(model, len(config.features))
        except Exception as err:  # the edge uses the joblib file instead
            logger.warning("fleet model does not convert to ONNX: %s", err)
    stats = {
        name: FeatureStats(
            mean=float(np.mean(col)),
            std=float(np.std(col)),
            p01=float(np.quantile(col, 0.01)),
            p99=float(np.quantile(col, 0.99)),
        )
        for name, col in zip(config.features, x.T, strict=True)
    }
    return FleetModel(model, FLEET_FAMILY, len(y), dump_joblib(model), onnx_blob, stats)


def pooled_fleet_rows(results: pd.DataFrame, config: TrainingConfig, max_rows: int | None = None) -> np.ndarray:
    """Stack the training rows that devices with a model sent, subsampled (seeded) to `max_rows`."""
    n_columns = len(config.features) + 1
    blobs = results.loc[results["status"].isin(["trained", "fallback"]), "fleet_rows_blob"].dropna()
    if blobs.empty:
        return np.empty((0, n_columns))
    rows = np.vstack([decode_rows(blob, n_columns) for blob in blobs])
    if max_rows is not None and rows.shape[0] > max_rows:
        rng = np.random.default_rng(config.seed)
        rows = rows[np.sort(rng.choice(rows.shape[0], max_rows, replace=False))]
    return rows


def judge_against_fleet(results: pd.DataFrame, fleet: FleetModel, config: TrainingConfig) -> pd.DataFrame:
    """Return results with each device's fleet hold-out error and its trained/fallback verdict."""
    results = results.copy()
    n_columns = len(config.features) + 1
    pending = results.index[results["holdout_blob"].notna()]
    if pending.empty:
        return results
    blocks = [decode_rows(blob, n_columns) for blob in results.loc[pending, "holdout_blob"]]
    stacked = np.vstack(blocks)
    predictions = np.split(fleet.model.predict(stacked[:, :-1]), np.cumsum([len(b) for b in blocks])[:-1])
    metrics = [holdout_metrics(block[:, -1], p) for block, p in zip(blocks, predictions, strict=True)]
    device_mse = results.loc[pending, "mse"].to_numpy(dtype=float)
    families = results.loc[pending, "family"].tolist()
    verdicts = [
        judge(float(own), fleet_mse, config.fleet_margin, family)
        for own, (fleet_mse, _, _), family in zip(device_mse, metrics, families, strict=True)
    ]
    for position, column in enumerate(("fleet_mse", "fleet_mae", "fleet_r2")):
        results.loc[pending, column] = [m[position] for m in metrics]
    for position, column in enumerate(("status", "reason", "detail")):
        results.loc[pending, column] = pd.Series([v[position] for v in verdicts], index=pending, dtype=object)
    results["holdout_blob"] = None
    return results


def train_fleet_locally(
    frames: Iterable[pd.DataFrame], config: TrainingConfig, fleet_max_rows: int | None = None
) -> tuple[pd.DataFrame, FleetModel]:
    """Train every device, then the fleet model, in this process: the Spark job's logic without Spark."""
    results = gate_stale_devices(
        results_frame([train_device(frame, config) for frame in frames]), config.max_staleness_days
    )
    fleet = train_fleet(pooled_fleet_rows(results, config, fleet_max_rows), config)
    return judge_against_fleet(results, fleet, config), fleet
