"""Per-device training: a pure function of one device's pandas frame.

`train_device(frame, config, fleet_model)` gates the data, splits it by time, fits each
candidate family, keeps the best one on the hold-out that fits the edge budget, and
compares it with the fleet model. It never raises: any error becomes a `failed` result.
Spark and MLflow code only wire it (see `spark_job.py`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from cloud_training.families import make_estimator
from cloud_training.knobs import EdgeBudget, ModelKnobs
from edgefleet.feature_reference import reference_from_values
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN

logger = logging.getLogger(__name__)

LATENCY_SAMPLES = 25
JOBLIB_COMPRESS_LEVEL = 3
_EPOCH = pd.Timestamp(0, tz="UTC")
FLOAT32_MAX = float(np.finfo(np.float32).max)
REFERENCE_BINS = 10
# A feature reference must cover the features' daily cycle: the edge compares it with a day of
# readings, and a reference of a few hours would make every day look drifted.
REFERENCE_MIN_SPAN_S = 86_400.0


class TrainingConfig(ModelKnobs):
    """Everything `train_device` needs besides the data; validated once on the driver."""

    features: tuple[str, ...]
    target: str = LABEL_COLUMN
    min_holdout_rows: int = Field(5, ge=1)
    max_bad_row_fraction: float = Field(0.2, ge=0.0, le=1.0)
    max_staleness_days: float = Field(30.0, gt=0.0)
    reference_ts_s: float | None = None
    budget: EdgeBudget = EdgeBudget()
    fleet_rows_per_device: int = Field(0, ge=0, description="training rows each device contributes to the fleet model")

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if not self.features:
            raise ValueError("Name at least one feature column")
        return self


@dataclass(frozen=True)
class DeviceResult:
    """One device's training outcome; one row of the Spark result table."""

    device_id: str
    status: str
    reason: str | None = None
    detail: str | None = None
    family: str | None = None
    n_rows: int = 0
    n_dropped: int = 0
    n_train: int = 0
    n_holdout: int = 0
    mse: float | None = None
    mae: float | None = None
    r2: float | None = None
    fleet_mse: float | None = None
    fleet_mae: float | None = None
    fleet_r2: float | None = None
    model_bytes: int | None = None
    onnx_bytes: int | None = None
    predict_us: float | None = None
    train_s: float = 0.0
    last_ts_s: float | None = None
    candidates: str | None = None
    joblib_blob: bytes | None = None
    onnx_blob: bytes | None = None
    holdout_blob: bytes | None = None
    fleet_rows_blob: bytes | None = None
    feature_reference: str | None = None  # JSON {feature: FeatureReference.to_text()} for the edge's drift monitor

    @classmethod
    def skipped(cls, device_id: str, reason: str, detail: str, **counts: Any) -> DeviceResult:
        """Return the result of a device that a data-quality gate kept out of training."""
        return cls(device_id=device_id, status="skipped", reason=reason, detail=detail, **counts)

    @classmethod
    def failed(cls, device_id: str, reason: str, detail: str, **counts: Any) -> DeviceResult:
        """Return the result of a device whose training raised or produced no usable model."""
        return cls(device_id=device_id, status="failed", reason=reason, detail=detail[:2000], **counts)

    def to_row(self) -> dict[str, Any]:
        """Return the result as a flat dict matching RESULT_DDL."""
        return dataclasses.asdict(self)


# Columns that carry data to the driver, not facts to report or log.
BLOB_COLUMNS = ("joblib_blob", "onnx_blob", "holdout_blob", "fleet_rows_blob", "feature_reference")
_DDL_TYPES = {"str": "string", "int": "bigint", "float": "double", "bytes": "binary"}


def dataclass_ddl(cls: type) -> str:
    """Return the Spark DDL of a flat dataclass whose fields are str, int, float or bytes (optionally None)."""
    parts = []
    for f in dataclasses.fields(cls):
        base = str(f.type).split("|")[0].strip()
        parts.append(f"{f.name} {_DDL_TYPES[base]}")
    return ", ".join(parts)


RESULT_DDL = dataclass_ddl(DeviceResult)
RESULT_COLUMNS = tuple(f.name for f in dataclasses.fields(DeviceResult))
_NULLABLE_INTS = tuple(
    f.name for f in dataclasses.fields(DeviceResult) if str(f.type).startswith("int") and "None" in str(f.type)
)


def results_frame(results: list[DeviceResult]) -> pd.DataFrame:
    """Return results as a frame whose dtypes match RESULT_DDL (nullable ints stay ints)."""
    frame = pd.DataFrame([r.to_row() for r in results], columns=list(RESULT_COLUMNS))
    for name in _NULLABLE_INTS:
        frame[name] = frame[name].astype("Int64")
    return frame


@dataclass(frozen=True)
class Prepared:
    """A device's frame after the data-quality gates, split by time."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    n_rows: int
    n_dropped: int
    last_ts_s: float
    first_ts_s: float


def prepare_device(frame: pd.DataFrame, config: TrainingConfig, device_id: str) -> Prepared | DeviceResult:
    """Apply the data-quality gates and the time-ordered split, or return why the device is skipped."""
    n_rows = len(frame)
    if n_rows < config.min_rows:
        return DeviceResult.skipped(
            device_id, "too_few_rows", f"{n_rows} rows; at least {config.min_rows} are needed", n_rows=n_rows
        )
    columns = [*config.features, config.target]
    values = frame[columns].to_numpy(dtype=float)
    ts = pd.to_datetime(frame[TS_COLUMN], utc=True)
    good = np.isfinite(values).all(axis=1) & ts.notna().to_numpy()
    n_dropped = int((~good).sum())
    if n_dropped > config.max_bad_row_fraction * n_rows:
        bad_cols = [c for c, col_ok in zip(columns, np.isfinite(values).all(axis=0), strict=True) if not col_ok]
        return DeviceResult.skipped(
            device_id,
            "non_finite_values",
            f"{n_dropped} of {n_rows} rows have NaN/inf or no timestamp (columns: {', '.join(bad_cols) or 'ts'}); "
            f"at most {config.max_bad_row_fraction:.0%} may",
            n_rows=n_rows,
            n_dropped=n_dropped,
        )
    counts: dict[str, Any] = {"n_rows": n_rows, "n_dropped": n_dropped}
    order = np.argsort(ts[good].to_numpy(), kind="stable")
    values = values[good][order]
    ts_s = ((ts[good] - _EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)[order]
    n = values.shape[0]
    if n < config.min_rows:
        return DeviceResult.skipped(
            device_id, "too_few_rows", f"{n} usable rows; at least {config.min_rows} are needed", **counts
        )
    last_ts_s = float(ts_s[-1])
    first_ts_s = float(ts_s[0])
    counts["last_ts_s"] = last_ts_s
    if config.reference_ts_s is not None:
        age_days = (config.reference_ts_s - last_ts_s) / 86_400.0
        if age_days > config.max_staleness_days:
            return DeviceResult.skipped(
                device_id,
                "stale_data",
                stale_detail(age_days, config.max_staleness_days),
                **counts,
            )
    y = values[:, -1]
    if float(np.std(y)) <= 1e-9 * max(1.0, abs(float(np.mean(y)))):
        return DeviceResult.skipped(
            device_id, "constant_label", f"label is constant ({y[0]:g}): stuck sensor?", **counts
        )
    n_holdout = max(config.min_holdout_rows, math.ceil(n * config.holdout_fraction))
    cut = n - n_holdout
    x = values[:, :-1]
    return Prepared(x[:cut], y[:cut], x[cut:], y[cut:], n_rows, n_dropped, last_ts_s, first_ts_s)


def feature_references(data: Prepared, features: tuple[str, ...] | list[str]) -> str | None:
    """Return the JSON of each feature's training distribution, or None when the data spans under a day."""
    if data.last_ts_s - data.first_ts_s < REFERENCE_MIN_SPAN_S:
        return None
    x = np.concatenate([data.x_train, data.x_holdout])
    references = {}
    for column, name in enumerate(features):
        try:
            references[name] = reference_from_values(x[:, column], bins=REFERENCE_BINS).to_text()
        except ValueError as err:  # too few values for the bins: that feature is not judged at the edge
            logger.info("no reference for %s: %s", name, err)
    return json.dumps(references, separators=(",", ":")) if references else None


def stale_detail(age_days: float, max_staleness_days: float) -> str:
    """Say how far behind the fleet a device's newest reading is."""
    return f"newest reading is {age_days:.1f} days older than the fleet's; limit {max_staleness_days:g}"


def gate_stale_devices(results: pd.DataFrame, max_staleness_days: float) -> pd.DataFrame:
    """Skip devices whose newest reading lags the fleet's newest by more than the limit (on the driver)."""
    newest_s = results["last_ts_s"].max()
    if pd.isna(newest_s):
        return results
    age_days = (newest_s - results["last_ts_s"]) / 86_400.0
    stale = (age_days > max_staleness_days) & results["status"].isin(["trained", "fallback"])
    if not stale.any():
        return results
    results = results.copy()
    results.loc[stale, "detail"] = [stale_detail(age, max_staleness_days) for age in age_days[stale]]
    results.loc[stale, ["status", "reason"]] = ["skipped", "stale_data"]
    cleared = ["family", "mse", "mae", "r2", "model_bytes", "onnx_bytes", "predict_us", *BLOB_COLUMNS]
    results.loc[stale, cleared] = None
    return results


def holdout_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """Return (mse, mae, r2); r2 is 0 when the hold-out label is constant."""
    err = y_true - y_pred
    mse = float(np.mean(err**2))
    mae = float(np.mean(np.abs(err)))
    var = float(np.var(y_true))
    r2 = 1.0 - mse / var if var > 0 else 0.0
    return mse, mae, r2


def encode_rows(rows: np.ndarray) -> bytes:
    """Pack a float matrix (features then label) for the trip to the driver."""
    return np.ascontiguousarray(rows, dtype=np.float64).tobytes()


def decode_rows(blob: bytes, n_columns: int) -> np.ndarray:
    """Unpack a matrix packed by `encode_rows`."""
    return np.frombuffer(blob, dtype=np.float64).reshape(-1, n_columns)


def fleet_rows(data: Prepared, config: TrainingConfig, device_id: str) -> bytes | None:
    """Return a seeded sample of the device's *training* rows (never its hold-out) for the fleet model."""
    rows = np.column_stack([data.x_train, data.y_train])
    if config.fleet_rows_per_device == 0 or np.abs(rows).max() > FLOAT32_MAX:
        return None  # values no edge runtime (float32) can carry do not teach the fleet model
    if rows.shape[0] > config.fleet_rows_per_device:
        rng = np.random.default_rng(estimator_seed(device_id, config.seed))
        rows = rows[np.sort(rng.choice(rows.shape[0], config.fleet_rows_per_device, replace=False))]
    return encode_rows(rows)


def judge(device_mse: float, fleet_mse: float, margin: float, family: str | None) -> tuple[str, str | None, str | None]:
    """Return (status, reason, detail): `fallback` unless the device beats the fleet by `margin`."""
    if device_mse <= fleet_mse * (1.0 - margin):
        return "trained", None, None
    detail = f"device {family} mse {device_mse:.4g} does not beat fleet mse {fleet_mse:.4g} by {margin:.0%}"
    return "fallback", "poor_model", detail


def estimator_seed(device_id: str, seed: int) -> int:
    """Return a stable seed per device, so retraining the same data gives the same model."""
    return (zlib.crc32(device_id.encode()) ^ seed) & 0x7FFFFFFF


def dump_joblib(model: Any) -> bytes:
    """Serialise a fitted model to compressed joblib bytes."""
    buffer = io.BytesIO()
    joblib.dump(model, buffer, compress=JOBLIB_COMPRESS_LEVEL)
    return buffer.getvalue()


def to_onnx_bytes(model: Any, n_features: int) -> bytes:
    """Convert a fitted scikit-learn model to ONNX (float32 input named `input`)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, n_features]))])
    return bytes(onnx_model.SerializeToString())


def predict_latency_us(model: Any, onnx_blob: bytes | None, row: np.ndarray) -> float:
    """Return the median single-row predict time on the runtime the edge will use."""
    if onnx_blob is not None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_blob, options, providers=["CPUExecutionProvider"])
        feed = {"input": row.astype(np.float32)}

        def call() -> object:
            return session.run(None, feed)
    else:

        def call() -> object:
            return model.predict(row)

    call()
    samples = []
    for _ in range(LATENCY_SAMPLES):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    return float(np.median(samples)) / 1_000.0


@dataclass
class _Candidate:
    family: str
    model: Any = None
    mse: float = math.inf
    mae: float = math.inf
    r2: float = -math.inf
    blob: bytes | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        if self.error:
            return {"family": self.family, "error": self.error}
        summary: dict[str, Any] = {"family": self.family, "mse": self.mse}
        if self.blob is not None:
            summary["bytes"] = len(self.blob)
        return summary


def _fit_candidate(family: str, data: Prepared, seed: int) -> _Candidate:
    try:
        model = make_estimator(family, seed)
        model.fit(data.x_train, data.y_train)
        pred = model.predict(data.x_holdout)
        if not np.isfinite(pred).all():
            raise ValueError("model predicts NaN/inf on the hold-out")
        mse, mae, r2 = holdout_metrics(data.y_holdout, pred)
        return _Candidate(family, model, mse, mae, r2)
    except Exception as err:  # a family failing leaves the others in the race
        return _Candidate(family, error=f"{type(err).__name__}: {err}"[:300])


def train_device(frame: pd.DataFrame, config: TrainingConfig, fleet_model: Any = None) -> DeviceResult:
    """Train, select and check one device's model; never raise."""
    started = time.perf_counter()
    device_id = str(frame[DEVICE_COLUMN].iloc[0]) if len(frame) else "<empty>"
    try:
        with warnings.catch_warnings():
            # Outcomes are recorded per device; library warnings would flood worker logs.
            warnings.simplefilter("ignore")
            result = _train_device(frame, config, fleet_model, device_id)
    except Exception as err:  # one device failing never fails the batch
        logger.warning("device %s failed: %s", device_id, err)
        result = DeviceResult.failed(device_id, "exception", f"{type(err).__name__}: {err}", n_rows=len(frame))
    return dataclasses.replace(result, train_s=time.perf_counter() - started)


def _train_device(frame: pd.DataFrame, config: TrainingConfig, fleet_model: Any, device_id: str) -> DeviceResult:
    data = prepare_device(frame, config, device_id)
    if isinstance(data, DeviceResult):
        return data
    counts: dict[str, Any] = {
        "n_rows": data.n_rows,
        "n_dropped": data.n_dropped,
        "n_train": len(data.y_train),
        "n_holdout": len(data.y_holdout),
        "last_ts_s": data.last_ts_s,
        "feature_reference": feature_references(data, config.features),
    }
    seed = estimator_seed(device_id, config.seed)
    candidates = [_fit_candidate(family, data, seed) for family in config.families]
    fitted = sorted((c for c in candidates if c.error is None), key=lambda c: c.mse)
    if not fitted:
        errors = "; ".join(f"{c.family}: {c.error}" for c in candidates)
        return DeviceResult.failed(device_id, "all_candidates_failed", errors, **counts)
    budget = config.budget
    rejected = []
    chosen = None
    for cand in fitted:  # best hold-out error first; serialise only as far as needed
        cand.blob = dump_joblib(cand.model)
        if len(cand.blob) > budget.max_model_bytes:
            rejected.append(f"{cand.family}: {len(cand.blob)} B > {budget.max_model_bytes} B")
            continue
        onnx_blob = None
        if config.onnx:
            try:
                onnx_blob = to_onnx_bytes(cand.model, len(config.features))
            except Exception as err:  # the edge falls back to joblib for families ONNX cannot express
                logger.info("device %s: %s does not convert to ONNX: %s", device_id, cand.family, err)
            if onnx_blob is not None and len(onnx_blob) > budget.max_model_bytes:
                onnx_blob = None
        latency_us = predict_latency_us(cand.model, onnx_blob, data.x_holdout[:1])
        if latency_us > budget.max_predict_us:
            rejected.append(f"{cand.family}: {latency_us:.0f} us > {budget.max_predict_us:g} us")
            continue
        chosen = (cand, onnx_blob, latency_us)
        break
    counts["candidates"] = json.dumps([c.summary() for c in candidates])
    if chosen is not None:
        return _compare_with_fleet(device_id, *chosen, data, config, fleet_model, counts)
    return DeviceResult.failed(
        device_id, "over_budget", "no candidate fits the edge budget: " + "; ".join(rejected), **counts
    )


def _compare_with_fleet(
    device_id: str,
    cand: _Candidate,
    onnx_blob: bytes | None,
    latency_us: float,
    data: Prepared,
    config: TrainingConfig,
    fleet_model: Any,
    counts: dict[str, Any],
) -> DeviceResult:
    status: str = "trained"
    reason = detail = None
    fleet_mse = fleet_mae = fleet_r2 = None
    holdout_blob = None
    if fleet_model is not None:
        fleet_mse, fleet_mae, fleet_r2 = holdout_metrics(data.y_holdout, fleet_model.predict(data.x_holdout))
        status, reason, detail = judge(cand.mse, fleet_mse, config.fleet_margin, cand.family)
    else:  # the driver judges against the fleet model once it is trained
        holdout_blob = encode_rows(np.column_stack([data.x_holdout, data.y_holdout]))
    assert cand.blob is not None
    return DeviceResult(
        device_id=device_id,
        status=status,
        reason=reason,
        detail=detail,
        family=cand.family,
        mse=cand.mse,
        mae=cand.mae,
        r2=cand.r2,
        fleet_mse=fleet_mse,
        fleet_mae=fleet_mae,
        fleet_r2=fleet_r2,
        model_bytes=len(cand.blob),
        onnx_bytes=len(onnx_blob) if onnx_blob is not None else None,
        predict_us=latency_us,
        joblib_blob=cand.blob,
        onnx_blob=onnx_blob,
        holdout_blob=holdout_blob,
        fleet_rows_blob=fleet_rows(data, config, device_id),
        **counts,
    )
