"""The fleet model: one model over all devices' training data, the fallback on the edge."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cloud_training.device_training import (
    Prepared,
    TrainingConfig,
    dump_joblib,
    estimator_seed,
    prepare_device,
    to_onnx_bytes,
)
from cloud_training.families import make_estimator
from edgefleet.bundle import FeatureStats
from edgefleet.history import DEVICE_COLUMN

logger = logging.getLogger(__name__)

FLEET_FAMILY = "fleet_gradient_boosting"
FLOAT32_MAX = float(np.finfo(np.float32).max)


def fleet_sample(frame: pd.DataFrame, config: TrainingConfig, max_rows: int) -> pd.DataFrame:
    """Return up to `max_rows` rows of one device's *training* split (never its hold-out)."""
    columns = [*config.features, config.target]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    device_id = str(frame[DEVICE_COLUMN].iloc[0])
    data = prepare_device(frame, config, device_id)
    if not isinstance(data, Prepared):
        return pd.DataFrame(columns=columns)  # gated devices do not teach the fleet model
    rows = np.column_stack([data.x_train, data.y_train])
    if np.abs(rows).max() > FLOAT32_MAX:
        return pd.DataFrame(columns=columns)  # values no edge runtime (float32) can carry
    if rows.shape[0] > max_rows:
        rng = np.random.default_rng(estimator_seed(device_id, config.seed))
        rows = rows[np.sort(rng.choice(rows.shape[0], max_rows, replace=False))]
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class FleetModel:
    """The fitted fleet model and its serialised forms."""

    model: Any
    family: str
    n_train: int
    joblib_blob: bytes
    onnx_blob: bytes | None
    feature_stats: dict[str, FeatureStats]


def train_fleet(sample: pd.DataFrame, config: TrainingConfig) -> FleetModel:
    """Fit the fleet model on the pooled sample; raise ValueError when there is nothing to learn from."""
    if len(sample) < config.min_rows:
        raise ValueError(
            f"only {len(sample)} usable training rows across the fleet; the fleet model needs {config.min_rows}"
        )
    x = sample[list(config.features)].to_numpy(dtype=float)
    y = sample[config.target].to_numpy(dtype=float)
    model = make_estimator(FLEET_FAMILY, config.seed)
    model.fit(x, y)
    onnx_blob = None
    if config.export_onnx:
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
