"""Per-device training: a pure function of one device's pandas frame.

`train_device(frame, config, fleet_model)` gates the data and splits it by time into three
slices: fit rows, then an INNER validation slice, then the FINAL hold-out (the newest
max(min_holdout_rows, ceil(n * holdout_fraction)) rows; the inner slice is as large and just
before it). It fits each candidate family on the fit rows, and chooses what serves the device
among its own best model (`device`), the fleet model (`fleet`) and the fleet model plus the
device's shrunk correction (`fleet_corrected`, `correction.py`) on the inner slice only. The
chosen model and the correction are then refitted on fit + inner rows and every kind is scored
on the final slice, which nothing was chosen on. It never raises: any error becomes a `failed`
result. Spark and MLflow code only wire it (see `spark_job.py`, `fleet_job.py`).
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

from cloud_training.correction import apply_correction, correction_to_json, fit_correction
from cloud_training.device_rows import device_arrays, epoch_seconds
from cloud_training.families import make_estimator, trusted_fitting
from cloud_training.knobs import EdgeBudget, ModelKnobs
from edgefleet.bundle import Correction
from edgefleet.feature_reference import reference_from_values
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN

logger = logging.getLogger(__name__)

LATENCY_SAMPLES = 25
JOBLIB_COMPRESS_LEVEL = 3
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
    fleet_rows_per_device: int = Field(
        0, ge=0, description="fit and inner rows each device contributes to the fleet model's selection"
    )

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
    n_inner: int = 0
    n_holdout: int = 0
    kind: str | None = None  # what serves the device: device, fleet or fleet_corrected
    # mse/mae/r2: the served kind's error on the final slice; device_*, fleet_*, corrected_*: each kind's.
    mse: float | None = None
    mae: float | None = None
    r2: float | None = None
    fleet_mse: float | None = None
    fleet_mae: float | None = None
    fleet_r2: float | None = None
    device_mse: float | None = None
    device_mae: float | None = None
    device_r2: float | None = None
    corrected_mse: float | None = None
    corrected_mae: float | None = None
    corrected_r2: float | None = None
    inner_device_mse: float | None = None
    inner_fleet_mse: float | None = None
    inner_corrected_mse: float | None = None
    # The fleet-wide check (`strategy.py`): the kind this device would serve if chosen on the OLDER
    # half of its inner slice only, and each kind's summed squared error on the NEWER half.
    check_kind: str | None = None
    check_rows: int | None = None
    check_device_sse: float | None = None
    check_fleet_sse: float | None = None
    check_corrected_sse: float | None = None
    correction: str | None = None  # JSON {"intercept": .., "coef": [..]} in feature order (`correction.py`)
    model_bytes: int | None = None
    onnx_bytes: int | None = None
    predict_us: float | None = None
    train_s: float = 0.0
    last_ts_s: float | None = None
    candidates: str | None = None
    joblib_blob: bytes | None = None
    onnx_blob: bytes | None = None
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
BLOB_COLUMNS = ("joblib_blob", "onnx_blob", "feature_reference")
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
    """A device's frame after the data-quality gates, split by time.

    `x_train` is everything before the final hold-out: the fit rows, then the last `n_inner`
    rows, the inner validation slice that the choice is made on.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    n_rows: int
    n_dropped: int
    last_ts_s: float
    first_ts_s: float
    n_inner: int = 0

    @property
    def n_fit(self) -> int:
        """Return how many rows the candidates are fitted on before the choice."""
        return len(self.y_train) - self.n_inner

    @property
    def x_fit(self) -> np.ndarray:
        return self.x_train[: self.n_fit]

    @property
    def y_fit(self) -> np.ndarray:
        return self.y_train[: self.n_fit]

    @property
    def x_inner(self) -> np.ndarray:
        return self.x_train[self.n_fit :]

    @property
    def y_inner(self) -> np.ndarray:
        return self.y_train[self.n_fit :]


MIN_FIT_ROWS = 3
# The correction's shrinkage when the fleet gave no estimate (retraining against a champion's fleet model).
DEFAULT_PRIOR_ROWS = 30.0


def holdout_rows(n: int, config: ModelKnobs, min_holdout_rows: int) -> int:
    """Return the size of the final hold-out (and of the inner slice before it) for `n` rows."""
    return max(min_holdout_rows, math.ceil(n * config.holdout_fraction))


def prepare_device(frame: pd.DataFrame, config: TrainingConfig, device_id: str) -> Prepared | DeviceResult:
    """Apply the data-quality gates and the time-ordered split, or return why the device is skipped."""
    n_rows = len(frame)
    if n_rows < config.min_rows:
        return DeviceResult.skipped(
            device_id, "too_few_rows", f"{n_rows} rows; at least {config.min_rows} are needed", n_rows=n_rows
        )
    columns = [*config.features, config.target]
    values, stamps = device_arrays(frame, columns)
    good = np.isfinite(values).all(axis=1) & ~np.isnat(stamps)
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
    stamps = stamps[good]
    order = np.argsort(stamps, kind="stable")
    values = values[good][order]
    ts_s = epoch_seconds(stamps)[order]
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
    n_holdout = holdout_rows(n, config, config.min_holdout_rows)
    n_inner = n_holdout
    cut = n - n_holdout
    if cut - n_inner < MIN_FIT_ROWS:
        return DeviceResult.skipped(
            device_id,
            "too_few_rows",
            f"{n} usable rows leave {cut - n_inner} to fit on besides the inner and final hold-outs "
            f"({n_inner} + {n_holdout}); at least {MIN_FIT_ROWS} are needed",
            **counts,
        )
    x = values[:, :-1]
    return Prepared(x[:cut], y[:cut], x[cut:], y[cut:], n_rows, n_dropped, last_ts_s, first_ts_s, n_inner)


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
    cleared = ["family", "kind", "correction", "model_bytes", "onnx_bytes", "predict_us", *BLOB_COLUMNS]
    cleared += [f"{prefix}{m}" for prefix in ("", "device_", "corrected_") for m in ("mse", "mae", "r2")]
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


def fleet_sample(data: Prepared, config: TrainingConfig, device_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Return seeded samples of the device's fit rows and inner rows (never its final hold-out) for the fleet model.

    Rows are features then label. None when the device gives none: `fleet_rows_per_device` is 0,
    or it holds values no edge runtime (float32) can carry.
    """
    if config.fleet_rows_per_device == 0:
        return None
    fit = np.column_stack([data.x_fit, data.y_fit])
    inner = np.column_stack([data.x_inner, data.y_inner])
    if max(np.abs(fit).max(), np.abs(inner).max()) > FLOAT32_MAX:
        return None
    rng = np.random.default_rng(estimator_seed(device_id, config.seed))

    def sample(rows: np.ndarray) -> np.ndarray:
        if rows.shape[0] <= config.fleet_rows_per_device:
            return rows
        return rows[np.sort(rng.choice(rows.shape[0], config.fleet_rows_per_device, replace=False))]

    return sample(fit), sample(inner)


# What serves a device, simplest first: the pooled fleet model, the fleet model plus the device's
# shrunk offset, the device's own model. Each step up the ladder takes evidence: on the inner slice
# its MSE must beat the kind served so far by `fleet_margin` AND its absolute error must beat it by
# more than CHOICE_STANDARD_ERRORS standard errors of the paired per-row difference, so a handful of
# inner rows cannot move a device to a less pooled model by luck. Measured with
# `benchmarks/model_quality.py`: with the margin alone for the correction and the own model judged
# against the fleet model only, 30 of 102 storms took a correction and 33 their own model, and the
# deployed error was 34% above the fleet model's on the final slice.
KINDS = ("fleet", "fleet_corrected", "device")
CHOICE_STANDARD_ERRORS = 2.0


def beats(errors: np.ndarray, simpler_errors: np.ndarray, margin: float, standard_errors: float) -> bool:
    """Return whether per-row squared `errors` beat a simpler kind's by `margin` and by more than noise."""
    if float(errors.mean()) > float(simpler_errors.mean()) * (1.0 - margin):
        return False
    # On absolute errors: squared ones are heavy-tailed, and one wild row would mask a clear win.
    gain = np.sqrt(simpler_errors) - np.sqrt(errors)
    spread = float(gain.std(ddof=1)) / math.sqrt(gain.size) if gain.size > 1 else 0.0
    return float(gain.mean()) > standard_errors * spread


def choose_kind(inner_errors: dict[str, np.ndarray], margin: float) -> str:
    """Return the kind to serve from each kind's squared errors on the INNER slice (never the final slice's)."""
    usable = [kind for kind in KINDS if kind in inner_errors and _usable(inner_errors[kind])]
    if not usable:
        raise ValueError("no kind has finite inner-slice errors")
    served = usable[0]
    for kind in usable[1:]:  # up the ladder, simplest first: each step must beat what is served so far
        if beats(inner_errors[kind], inner_errors[served], margin, CHOICE_STANDARD_ERRORS):
            served = kind
    return served


def _usable(errors: np.ndarray) -> bool:
    return bool(errors.size) and bool(np.isfinite(errors).all())


CHECK_COLUMNS = {"device": "check_device_sse", "fleet": "check_fleet_sse", "fleet_corrected": "check_corrected_sse"}


def check_halves(inner_errors: dict[str, np.ndarray], margin: float) -> dict[str, Any]:
    """Return the fleet-wide check's columns: the kind chosen on the inner slice's older half, errors on its newer half.

    Empty without a fleet model or with fewer than two inner rows: such a device takes no part in the check.
    """
    n = inner_errors["device"].size
    if "fleet" not in inner_errors or n < 2:
        return {}
    older = n - n // 2
    check: dict[str, Any] = {
        "check_kind": choose_kind({kind: errors[:older] for kind, errors in inner_errors.items()}, margin),
        "check_rows": n - older,
    }
    for kind, errors in inner_errors.items():
        newer = errors[older:]
        check[CHECK_COLUMNS[kind]] = float(newer.sum()) if np.isfinite(newer).all() else None
    return check


def choice_verdict(kind: str, inner_mse: dict[str, float], family: str | None) -> tuple[str, str | None, str | None]:
    """Return (status, reason, detail) of a device whose served `kind` was chosen on the inner slice."""
    if kind == "device":
        return "trained", None, None
    own = inner_mse.get("device", math.inf)
    winner = "fleet model" if kind == "fleet" else "fleet model + device correction"
    share = 1.0 - inner_mse[kind] / own if math.isfinite(own) and own > 0 else 0.0
    detail = f"{winner} inner mse {inner_mse[kind]:.4g} vs device {family} {own:.4g} ({share:.0%} lower)"
    if kind == "fleet_corrected":
        return "trained", None, detail
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
    from cloud_training.onnx_writer import INPUT_NAME, onnx_graph_bytes

    written = onnx_graph_bytes(model, n_features)  # our families: skl2onnx's graph, 10x cheaper
    if written is not None:
        return written
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = convert_sklearn(
        model, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))], name="edgefleet"
    )
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
    mse: float = math.inf  # on the inner slice
    errors: np.ndarray | None = None  # squared, per inner row
    blob: bytes | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        if self.error:
            return {"family": self.family, "error": self.error}
        summary: dict[str, Any] = {"family": self.family, "inner_mse": self.mse}
        if self.blob is not None:
            summary["bytes"] = len(self.blob)
        return summary


def _fit_candidate(family: str, data: Prepared, seed: int) -> _Candidate:
    try:
        model = make_estimator(family, seed)
        model.fit(data.x_fit, data.y_fit)
        pred = model.predict(data.x_inner)
        if not np.isfinite(pred).all():
            raise ValueError("model predicts NaN/inf on the inner hold-out")
        errors = (data.y_inner - pred) ** 2
        return _Candidate(family, model, float(errors.mean()), errors)
    except Exception as err:  # a family failing leaves the others in the race
        return _Candidate(family, error=f"{type(err).__name__}: {err}"[:300])


@dataclass(frozen=True)
class FleetPredictors:
    """The fleet model's two fits: `inner` (on pooled fit rows) scores inner slices, `final` (fit + inner) the rest.

    Retraining passes one model for both: the champion's fleet model, fitted before any fresh row.
    """

    inner: Any
    final: Any
    prior_rows: float = DEFAULT_PRIOR_ROWS  # the correction's shrinkage, estimated across the fleet (`fleet.py`)


def _fleet_predictors(fleet_model: Any) -> FleetPredictors | None:
    if fleet_model is None or isinstance(fleet_model, FleetPredictors):
        return fleet_model
    return FleetPredictors(fleet_model, fleet_model)


def train_device(frame: pd.DataFrame, config: TrainingConfig, fleet_model: Any = None) -> DeviceResult:
    """Train, select and check one device's model; never raise.

    `fleet_model`: a fitted regressor or `FleetPredictors`; None chooses among the device's own
    models only (kind `device`).
    """
    started = time.perf_counter()
    device_id = str(frame[DEVICE_COLUMN].iloc[0]) if len(frame) else "<empty>"
    try:
        with warnings.catch_warnings(), trusted_fitting():
            # Outcomes are recorded per device; library warnings would flood worker logs.
            warnings.simplefilter("ignore")
            result = _train_device(frame, config, _fleet_predictors(fleet_model), device_id)
    except Exception as err:  # one device failing never fails the batch
        logger.warning("device %s failed: %s", device_id, err)
        result = DeviceResult.failed(device_id, "exception", f"{type(err).__name__}: {err}", n_rows=len(frame))
    return dataclasses.replace(result, train_s=time.perf_counter() - started)


def _train_device(
    frame: pd.DataFrame, config: TrainingConfig, fleet: FleetPredictors | None, device_id: str
) -> DeviceResult:
    data = prepare_device(frame, config, device_id)
    if isinstance(data, DeviceResult):
        return data
    counts: dict[str, Any] = {
        "n_rows": data.n_rows,
        "n_dropped": data.n_dropped,
        "n_train": len(data.y_train),
        "n_inner": data.n_inner,
        "n_holdout": len(data.y_holdout),
        "last_ts_s": data.last_ts_s,
        "feature_reference": feature_references(data, config.features),
    }
    seed = estimator_seed(device_id, config.seed)
    candidates = [_fit_candidate(family, data, seed) for family in config.families]
    fitted = sorted((c for c in candidates if c.error is None), key=lambda c: c.mse)
    if not fitted:
        counts["candidates"] = json.dumps([c.summary() for c in candidates])
        errors = "; ".join(f"{c.family}: {c.error}" for c in candidates)
        return DeviceResult.failed(device_id, "all_candidates_failed", errors, **counts)
    budget = config.budget
    rejected = []
    chosen = None
    for cand in fitted:  # best inner error first; refit on fit + inner rows and serialise only as far as needed
        try:
            model = make_estimator(cand.family, seed).fit(data.x_train, data.y_train)
            final_pred = np.asarray(model.predict(data.x_holdout), dtype=float)
        except Exception as err:  # the refit failing leaves the next family in the race
            rejected.append(f"{cand.family}: refit raised {type(err).__name__}: {err}"[:300])
            continue
        cand.blob = dump_joblib(model)
        if len(cand.blob) > budget.max_model_bytes:
            rejected.append(f"{cand.family}: {len(cand.blob)} B > {budget.max_model_bytes} B")
            continue
        onnx_blob = None
        if config.onnx:
            try:
                onnx_blob = to_onnx_bytes(model, len(config.features))
            except Exception as err:  # the edge falls back to joblib for families ONNX cannot express
                logger.info("device %s: %s does not convert to ONNX: %s", device_id, cand.family, err)
            if onnx_blob is not None and len(onnx_blob) > budget.max_model_bytes:
                onnx_blob = None
        latency_us = predict_latency_us(model, onnx_blob, data.x_holdout[:1])
        if latency_us > budget.max_predict_us:
            rejected.append(f"{cand.family}: {latency_us:.0f} us > {budget.max_predict_us:g} us")
            continue
        chosen = (cand, final_pred, onnx_blob, latency_us)
        break
    counts["candidates"] = json.dumps([c.summary() for c in candidates])
    if chosen is None:
        return DeviceResult.failed(
            device_id, "over_budget", "no candidate fits the edge budget: " + "; ".join(rejected), **counts
        )
    return _choose_kind(device_id, *chosen, data, config, fleet, counts)


def _finite_metrics(y: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    if not np.isfinite(pred).all():
        return math.inf, math.inf, -math.inf  # a model that predicts NaN/inf never wins
    return holdout_metrics(y, pred)


def _choose_kind(
    device_id: str,
    cand: _Candidate,
    device_pred: np.ndarray,
    onnx_blob: bytes | None,
    latency_us: float,
    data: Prepared,
    config: TrainingConfig,
    fleet: FleetPredictors | None,
    counts: dict[str, Any],
) -> DeviceResult:
    assert cand.blob is not None and cand.errors is not None
    final: dict[str, tuple[float, float, float]] = {"device": _finite_metrics(data.y_holdout, device_pred)}
    inner_errors: dict[str, np.ndarray] = {"device": cand.errors}
    correction: Correction | None = None
    if fleet is not None:
        prior_rows = config.correction_prior_rows if config.correction_prior_rows is not None else fleet.prior_rows
        # Inner phase: the fleet fitted on pooled fit rows, the correction on this device's fit rows.
        fleet_inner = np.asarray(fleet.inner.predict(data.x_train), dtype=float)
        fit, inner = slice(0, data.n_fit), slice(data.n_fit, None)
        trial = fit_correction(data.x_fit, data.y_fit - fleet_inner[fit], prior_rows)
        inner_errors["fleet"] = (data.y_inner - fleet_inner[inner]) ** 2
        corrected_inner = apply_correction(trial, data.x_inner, fleet_inner[inner])
        inner_errors["fleet_corrected"] = (data.y_inner - corrected_inner) ** 2
        # Final phase: the fleet refitted on fit + inner rows, the correction on this device's fit + inner rows.
        fleet_train = np.asarray(fleet.final.predict(data.x_train), dtype=float)
        fleet_final = np.asarray(fleet.final.predict(data.x_holdout), dtype=float)
        correction = fit_correction(data.x_train, data.y_train - fleet_train, prior_rows)
        final["fleet"] = _finite_metrics(data.y_holdout, fleet_final)
        final["fleet_corrected"] = _finite_metrics(
            data.y_holdout, apply_correction(correction, data.x_holdout, fleet_final)
        )
    kind = choose_kind(inner_errors, config.fleet_margin)  # the final slice plays no part in the choice
    counts = {**counts, **check_halves(inner_errors, config.fleet_margin)}
    inner_mse = {name: float(errors.mean()) for name, errors in inner_errors.items()}
    status, reason, detail = choice_verdict(kind, inner_mse, cand.family)
    # The own model ships whatever is served (as a fallback's always did): an operator can switch it
    # on, and an edge that predates `kind` serves it rather than the uncorrected fleet model.

    def metric(name: str, position: int) -> float | None:
        value = final.get(name)
        return None if value is None else value[position]

    return DeviceResult(
        device_id=device_id,
        status=status,
        reason=reason,
        detail=detail,
        family=cand.family,
        kind=kind,
        mse=metric(kind, 0),
        mae=metric(kind, 1),
        r2=metric(kind, 2),
        fleet_mse=metric("fleet", 0),
        fleet_mae=metric("fleet", 1),
        fleet_r2=metric("fleet", 2),
        device_mse=metric("device", 0),
        device_mae=metric("device", 1),
        device_r2=metric("device", 2),
        corrected_mse=metric("fleet_corrected", 0),
        corrected_mae=metric("fleet_corrected", 1),
        corrected_r2=metric("fleet_corrected", 2),
        inner_device_mse=inner_mse["device"],
        inner_fleet_mse=inner_mse.get("fleet"),
        inner_corrected_mse=inner_mse.get("fleet_corrected"),
        correction=correction_to_json(correction) if correction is not None else None,
        model_bytes=len(cand.blob),
        onnx_bytes=len(onnx_blob) if onnx_blob is not None else None,
        predict_us=latency_us,
        joblib_blob=cand.blob,
        onnx_blob=onnx_blob,
        **counts,
    )
