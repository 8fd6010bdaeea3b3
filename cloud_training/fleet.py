"""The fleet model: one model over all devices' rows, chosen like a device model.

Two steps (`fleet_job.py` runs them on Spark, `train_fleet_locally` in this process):

1. every device sends a seeded sample of its fit rows and of its inner-validation rows
   (`fleet_sample_frame`; never its final hold-out);
2. the driver fits each fleet family on the pooled fit rows (on `threads` threads: the trees are
   built outside the GIL, and the executors wait meanwhile), keeps the one with the lowest
   row-weighted error on the pooled inner rows, and refits it on fit + inner rows
   (`select_fleet`). The device pass then receives both fits (`FleetPredictors`): the first
   scores each device's inner slice honestly, the second is the served fleet model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cloud_training.device_training import (
    DEFAULT_PRIOR_ROWS,
    DeviceResult,
    FleetPredictors,
    TrainingConfig,
    decode_rows,
    dump_joblib,
    encode_rows,
    fleet_sample,
    holdout_metrics,
    prepare_device,
    results_frame,
    to_onnx_bytes,
    train_device,
)
from cloud_training.families import FLEET_CANDIDATES, make_estimator, trusted_fitting
from cloud_training.strategy import settle_choices
from edgefleet.bundle import FeatureStats
from edgefleet.history import DEVICE_COLUMN

logger = logging.getLogger(__name__)

MIN_PRIOR_ROWS = 1.0
MAX_PRIOR_ROWS = 10_000.0
SAMPLE_DDL = f"{DEVICE_COLUMN} string, last_ts_s double, fit_rows binary, inner_rows binary"


@dataclass(frozen=True)
class FleetModel:
    """The chosen fleet model (fitted on fit + inner rows), its inner-phase fit, and its serialised forms."""

    model: Any
    family: str
    n_train: int
    joblib_blob: bytes
    onnx_blob: bytes | None
    feature_stats: dict[str, FeatureStats]
    inner_model: Any = None
    n_inner: int = 0
    candidates: dict[str, float] = field(default_factory=dict)  # family -> pooled inner-slice mse
    prior_rows: float = DEFAULT_PRIOR_ROWS

    @property
    def predictors(self) -> FleetPredictors:
        """Return what the device pass scores with: the inner-phase fit, the served fit, the corrections' shrinkage."""
        inner = self.inner_model if self.inner_model is not None else self.model
        return FleetPredictors(inner, self.model, self.prior_rows)


SampleRecord = dict[str, Any]  # one SAMPLE_DDL row: device_id, last_ts_s, fit_rows, inner_rows


def fleet_sample_record(frame: pd.DataFrame, config: TrainingConfig) -> SampleRecord:
    """Return one device's contribution to the fleet model as one SAMPLE_DDL record (nulls when it sends none)."""
    device_id = str(frame[DEVICE_COLUMN].iloc[0]) if len(frame) else "<empty>"
    try:
        data = prepare_device(frame, config, device_id)
        sample = None if isinstance(data, DeviceResult) else fleet_sample(data, config, device_id)
    except Exception as err:  # the device pass reports the device's failure; it only sends no rows here
        logger.info("device %s sends no fleet rows: %s", device_id, err)
        sample = None
    if sample is None or isinstance(data, DeviceResult):
        return {DEVICE_COLUMN: device_id, "last_ts_s": None, "fit_rows": None, "inner_rows": None}
    return {
        DEVICE_COLUMN: device_id,
        "last_ts_s": data.last_ts_s,
        "fit_rows": encode_rows(sample[0]),
        "inner_rows": encode_rows(sample[1]),
    }


def fleet_sample_frame(frame: pd.DataFrame, config: TrainingConfig) -> pd.DataFrame:
    """Return one device's contribution as a one-row SAMPLE_DDL frame, as Spark's grouped map wants it."""
    # One row with nulls in it when the device sends none: an empty frame of binary columns does not cross Arrow.
    return pd.DataFrame({name: [value] for name, value in fleet_sample_record(frame, config).items()})


def samples_frame(records: Iterable[SampleRecord]) -> pd.DataFrame:
    """Return the devices' sample records as the frame the sample pass collects."""
    return pd.DataFrame.from_records(list(records), columns=[DEVICE_COLUMN, "last_ts_s", "fit_rows", "inner_rows"])


def device_samples(samples: pd.DataFrame, config: TrainingConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return each device's (fit rows, inner rows), in device order, stale devices left out."""
    n_columns = len(config.features) + 1
    samples = samples[samples["fit_rows"].notna()]
    if samples.empty:
        return []
    samples = samples.sort_values(DEVICE_COLUMN, kind="stable")  # Spark returns devices in any order
    age_days = (samples["last_ts_s"].max() - samples["last_ts_s"]) / 86_400.0
    samples = samples[age_days <= config.max_staleness_days]
    return [
        (decode_rows(fit, n_columns), decode_rows(inner, n_columns))
        for fit, inner in zip(samples["fit_rows"], samples["inner_rows"], strict=True)
    ]


def pooled_fleet_rows(
    blocks: list[tuple[np.ndarray, np.ndarray]], config: TrainingConfig, max_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stack the devices' fit and inner samples, each subsampled (seeded) to `max_rows`."""
    n_columns = len(config.features) + 1
    if not blocks:
        return np.empty((0, n_columns)), np.empty((0, n_columns))
    rng = np.random.default_rng(config.seed)
    pooled = []
    for part in (0, 1):
        rows = np.vstack([block[part] for block in blocks])
        if max_rows is not None and rows.shape[0] > max_rows:
            rows = rows[np.sort(rng.choice(rows.shape[0], max_rows, replace=False))]
        pooled.append(rows)
    return pooled[0], pooled[1]


def estimate_prior_rows(model: Any, blocks: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Return the corrections' shrinkage (in rows) by empirical Bayes: noise variance over the variance of true offsets.

    On each device's inner rows (out of sample for `model`): the mean residual m_d scatters by
    tau^2 (true offsets) + sigma^2 / n_d (noise), so tau^2 = var(m_d) - mean(sigma_d^2 / n_d), and
    an offset fitted on n rows keeps n / (n + sigma^2 / tau^2) of the device's mean residual.
    """
    inners = [inner for _, inner in blocks if inner.shape[0] >= 2]
    if len(inners) < 3:
        return DEFAULT_PRIOR_ROWS
    rows = np.vstack(inners)
    # One predict over every device's rows: a call per device costs the model's overhead 2,000 times.
    residuals = np.split(
        rows[:, -1] - np.asarray(model.predict(rows[:, :-1]), dtype=float), np.cumsum([len(i) for i in inners])[:-1]
    )
    means, variances, counts = [], [], []
    for residual in residuals:
        if not np.isfinite(residual).all():
            continue
        means.append(residual.mean())
        variances.append(residual.var(ddof=1))
        counts.append(len(residual))
    if len(means) < 3:
        return DEFAULT_PRIOR_ROWS
    noise = float(np.mean(variances))
    offsets = float(np.var(means, ddof=1) - np.mean(np.asarray(variances) / np.asarray(counts)))
    if offsets <= 0:
        return MAX_PRIOR_ROWS  # the devices' offsets are all noise: keep corrections near zero
    return float(np.clip(noise / offsets, MIN_PRIOR_ROWS, MAX_PRIOR_ROWS))


@dataclass(frozen=True)
class _FleetCandidate:
    family: str
    model: Any = None
    mse: float = np.inf  # on the pooled inner rows
    error: str | None = None


def _fit_fleet_candidate(family: str, fit_rows: np.ndarray, inner_rows: np.ndarray, seed: int) -> _FleetCandidate:
    try:
        with trusted_fitting():  # sklearn's configuration is per thread
            model = make_estimator(family, seed).fit(fit_rows[:, :-1], fit_rows[:, -1])
            pred = np.asarray(model.predict(inner_rows[:, :-1]), dtype=float)
        mse = holdout_metrics(inner_rows[:, -1], pred)[0] if np.isfinite(pred).all() else np.inf
        return _FleetCandidate(family, model, mse)
    except Exception as err:  # a family failing leaves the others in the race
        return _FleetCandidate(family, error=f"{type(err).__name__}: {err}")


def _fit_fleet_candidates(
    fit_rows: np.ndarray, inner_rows: np.ndarray, seed: int, threads: int
) -> list[_FleetCandidate]:
    def fit(family: str) -> _FleetCandidate:
        return _fit_fleet_candidate(family, fit_rows, inner_rows, seed)

    if threads <= 1:
        return [fit(family) for family in FLEET_CANDIDATES]
    with ThreadPoolExecutor(min(threads, len(FLEET_CANDIDATES)), thread_name_prefix="fleet-fit") as pool:
        return list(pool.map(fit, FLEET_CANDIDATES))


def select_fleet(fit_rows: np.ndarray, inner_rows: np.ndarray, config: TrainingConfig, threads: int = 1) -> FleetModel:
    """Choose the fleet family on pooled inner rows, refit it on fit + inner rows; raise ValueError when too few.

    `threads` fit the candidates side by side; the models are the same whatever their number.
    """
    if fit_rows.shape[0] < config.min_rows or inner_rows.shape[0] == 0:
        raise ValueError(
            f"only {fit_rows.shape[0]} usable fit rows and {inner_rows.shape[0]} inner rows across the fleet; "
            f"the fleet model needs {config.min_rows}"
        )
    y_inner = inner_rows[:, -1]
    candidates: dict[str, float] = {}
    fitted: dict[str, Any] = {}
    for cand in _fit_fleet_candidates(fit_rows, inner_rows, config.seed, threads):
        if cand.error is not None:
            logger.warning("fleet candidate %s failed: %s", cand.family, cand.error)
            continue
        candidates[cand.family] = cand.mse
        fitted[cand.family] = cand.model
    finite = {f: m for f, m in candidates.items() if np.isfinite(m)}
    if not finite:
        raise ValueError("every fleet family failed on the pooled rows")
    family = min(finite, key=finite.__getitem__)
    logger.info("fleet model %s chosen on %d pooled inner rows: %s", family, len(y_inner), candidates)
    rows = np.vstack([fit_rows, inner_rows])
    x, y = rows[:, :-1], rows[:, -1]
    with trusted_fitting():
        model = make_estimator(family, config.seed).fit(x, y)
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
    return FleetModel(
        model=model,
        family=family,
        n_train=len(y),
        joblib_blob=dump_joblib(model),
        onnx_blob=onnx_blob,
        feature_stats=stats,
        inner_model=fitted[family],
        n_inner=len(y_inner),
        candidates=candidates,
    )


def fleet_samples_locally(frames: Iterable[pd.DataFrame], config: TrainingConfig) -> pd.DataFrame:
    """Return every device's fleet sample, in this process: the sample pass without Spark."""
    return samples_frame(fleet_sample_record(frame, config) for frame in frames)


def fleet_from_samples(
    samples: pd.DataFrame, config: TrainingConfig, max_rows: int | None = None, threads: int = 1
) -> FleetModel:
    """Pool the devices' samples, choose the fleet model and estimate the corrections' shrinkage (the driver's step)."""
    blocks = device_samples(samples, config)
    fleet = select_fleet(*pooled_fleet_rows(blocks, config, max_rows), config, threads)
    prior_rows = estimate_prior_rows(fleet.inner_model, blocks)
    logger.info(
        "device corrections shrunk by %.1f prior rows (empirical Bayes over %d devices)", prior_rows, len(blocks)
    )
    return dataclasses.replace(fleet, prior_rows=prior_rows)


def train_fleet_locally(
    frames: Iterable[pd.DataFrame], config: TrainingConfig, fleet_max_rows: int | None = None
) -> tuple[pd.DataFrame, FleetModel]:
    """Choose the fleet model, then train every device against it, here: the Spark job's logic without Spark."""
    frames = list(frames)
    fleet = fleet_from_samples(fleet_samples_locally(frames, config), config, fleet_max_rows)
    results = results_frame([train_device(frame, config, fleet.predictors) for frame in frames])
    return settle_choices(results, config.max_staleness_days), fleet
