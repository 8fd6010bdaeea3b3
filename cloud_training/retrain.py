"""`edgefleet retrain`: retrain the devices that need it from the telemetry lake, keep the better model per device.

One Spark pass over the lake's fresh rows (`ts >= cutoff`; the cutoff is `--since` or the champion
bundle's `created_at`), `groupBy("device_id").applyInPandas`, runs the pure `retrain_device` once
per device. It

1. keeps one row per reading (the sensor's row and the inference module's row of the same reading
   are one reading: de-duplicated by `(ts, seq)`) and drops rows without a finite label/features;
2. re-scores the model that serves the device today (device model, or the fleet model for fallback,
   skipped, failed and unknown devices) on those rows: the live MSE;
3. picks the device when it is new (`new_device`), has no serving model of its own (`failed`,
   `skipped`, `fallback`), drifted (`drift`: live MSE > `drift_factor` x the champion's hold-out
   MSE in the manifest, on at least `min_drift_rows` rows), or gathered as much new data as its
   model was built from (`new_data`: fresh rows >= `new_data_factor` x its n_train + n_holdout);
4. for a drifted device, keeps only the rows after its drift point (`drift_start`: where the
   champion's error rises from within `drift_factor` x its hold-out MSE to beyond it);
5. for a picked device, holds out the newest `fresh_holdout_fraction` of its fresh rows, trains a
   challenger on the rest with `train_device` (the same function as `edgefleet train`; prior history
   joins only with `--history`), and scores the model each side would serve on that fresh hold-out;
   the challenger wins only when strictly better (by `improvement_margin`); ties, failures and
   skips keep the champion.

The driver then writes the merged bundle (`merge.merge_bundle`: unpicked and champion-kept devices
and the fleet model are copied byte for byte), registers it in MLflow, moves the `champion` alias
only when the mean fresh hold-out MSE over the compared devices fell, and writes the deployment
manifest for the new bundle.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
import pandas as pd
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import edgefleet
from cloud_training.device_training import (
    RESULT_DDL,
    DeviceResult,
    EdgeBudget,
    TrainingConfig,
    dataclass_ddl,
    holdout_metrics,
    results_frame,
    train_device,
)
from cloud_training.export import library_versions
from cloud_training.families import FAMILIES
from cloud_training.merge import (
    KEPT_CHALLENGER,
    KEPT_CHAMPION,
    deployment_variables,
    merge_bundle,
    summarize_decisions,
    write_deployment_manifest,
)
from cloud_training.spark_job import (
    StageProgress,
    default_parallelism,
    limit_native_threads,
    read_history_spark,
    spark_session,
    timestamp_column,
    training_partitions,
)
from cloud_training.tracking import RegisteredBundle, Tracker
from edgefleet.bundle import BundleManifest, BundleReader, DeviceEntry, Route, read_manifest, verify_bundle
from edgefleet.deployment import DEFAULT_TEMPLATE
from edgefleet.errors import BundleError, EdgefleetError, HistoryError
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN, check_columns, history_format
from edgefleet.lake import (
    DATE_COLUMN,
    PREDICTION_VALUE_COLUMN,
    PREDICTION_VERSION_COLUMN,
    SEQ_COLUMN,
    SOURCE_COLUMN,
    read_drift_alerts,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

FRESH_COLUMN = "_fresh"
INFERENCE_SOURCE = "inference"
NOT_TRAINED = "not_trained"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0, "w": 604_800.0}


def parse_since(text: str, now: datetime) -> datetime:
    """Return the UTC cutoff that an ISO time or a duration before `now` (`90m`, `24h`, `7d`) names."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
    try:
        cutoff = datetime.fromisoformat(text.strip())
    except ValueError:
        raise EdgefleetError(
            f"--since {text!r}: write an ISO time (2026-11-20T06:00:00Z) or a duration before now (90m, 24h, 7d)"
        ) from None
    return cutoff.replace(tzinfo=UTC) if cutoff.tzinfo is None else cutoff.astimezone(UTC)


class RetrainSettings(BaseSettings):
    """Settings of `edgefleet retrain`: flags override `EDGEFLEET_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="forbid", populate_by_name=True, frozen=True)

    lake: Path
    bundle: Path
    out: Path = Path("out/bundle-next")
    out_manifest: Path | None = Field(None, description="default: <out>.deployment.json beside the bundle")
    since: str | None = Field(None, description="ISO time or duration before now; default the bundle's created_at")
    prior_history: Path | None = Field(None, description="history to train challengers on besides the fresh rows")
    template: Path = DEFAULT_TEMPLATE
    image_registry: str = ""
    manifest_variables: dict[str, str] = Field(default_factory=dict)
    master: str = Field("local[*]", validation_alias=AliasChoices("master", "SPARK_MASTER", "EDGEFLEET_MASTER"))
    driver_memory: str = "4g"
    tracking: Literal["scalable", "off"] = "scalable"
    tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        validation_alias=AliasChoices("tracking_uri", "MLFLOW_TRACKING_URI", "EDGEFLEET_TRACKING_URI"),
    )
    experiment: str = "edgefleet"
    registered_model: str = "edgefleet-fleet"
    drift_factor: float = Field(2.0, gt=1.0)
    min_drift_rows: int = Field(20, ge=1)
    new_data_factor: float = Field(1.0, ge=0.0)
    fresh_holdout_fraction: float = Field(0.25, gt=0.0, lt=0.9)
    min_fresh_holdout_rows: int = Field(10, ge=1)
    improvement_margin: float = Field(0.0, ge=0.0, lt=1.0)
    families: tuple[str, ...] = tuple(FAMILIES)
    holdout_fraction: float = 0.2
    min_rows: int = 30
    fleet_margin: float = 0.05
    max_model_bytes: int = 100_000
    max_predict_us: float = 2_000.0
    onnx: bool = True
    seed: int = 0

    @field_validator("families")
    @classmethod
    def _known_families(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [f for f in value if f not in FAMILIES]
        if unknown or not value:
            raise ValueError(f"Unknown model families {unknown or '(none)'}; use some of: {', '.join(FAMILIES)}")
        return value

    @field_validator("since")
    @classmethod
    def _since_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_since(value, datetime.now(UTC))
            except EdgefleetError as err:
                raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _separate_outputs(self) -> RetrainSettings:
        out = self.out.resolve()
        if out == self.bundle.resolve():
            raise ValueError("--out is the champion --bundle; write the merged bundle to a new directory")
        if out in self.manifest_path.resolve().parents:
            # The inference module refuses a bundle holding files its manifest does not pin.
            raise ValueError("--out-manifest is inside the bundle directory; write it beside the bundle")
        return self

    @property
    def manifest_path(self) -> Path:
        """Return where the deployment manifest goes."""
        return self.out_manifest or self.out.with_name(f"{self.out.name}.deployment.json")

    def policy(self, champion: BundleManifest) -> RetrainPolicy:
        """Return what the per-device function needs besides the data and the champion's models."""
        return RetrainPolicy(
            training=TrainingConfig(
                features=champion.features,
                families=self.families,
                holdout_fraction=self.holdout_fraction,
                min_rows=self.min_rows,
                fleet_margin=self.fleet_margin,
                budget=EdgeBudget(max_model_bytes=self.max_model_bytes, max_predict_us=self.max_predict_us),
                export_onnx=self.onnx,
                fleet_rows_per_device=0,  # the champion's fleet model is kept: no rows to pool
                seed=self.seed,
            ),
            bundle_version=champion.bundle_version,
            drift_factor=self.drift_factor,
            min_drift_rows=self.min_drift_rows,
            new_data_factor=self.new_data_factor,
            fresh_holdout_fraction=self.fresh_holdout_fraction,
            min_fresh_holdout_rows=self.min_fresh_holdout_rows,
            improvement_margin=self.improvement_margin,
            use_history=self.prior_history is not None,
        )


class RetrainPolicy(BaseModel):
    """Everything `retrain_device` needs besides the data; validated once on the driver."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    training: TrainingConfig
    bundle_version: str
    drift_factor: float = Field(2.0, gt=1.0)
    min_drift_rows: int = Field(20, ge=1)
    new_data_factor: float = Field(1.0, ge=0.0)
    fresh_holdout_fraction: float = Field(0.25, gt=0.0, lt=0.9)
    min_fresh_holdout_rows: int = Field(10, ge=1)
    improvement_margin: float = Field(0.0, ge=0.0, lt=1.0)
    use_history: bool = False
    # Devices the edge raised a drift alert for since the cutoff (read from the lake's `_events`).
    edge_drift_devices: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Champion:
    """The champion's side of one device: its manifest entry and the models the edge serves it with."""

    entry: DeviceEntry | None
    served: Any
    fleet: Any


@dataclass(frozen=True)
class RetrainDecision:
    """Why a device was (not) retrained and which model it keeps; joins its challenger's DeviceResult."""

    pick_reasons: str | None = None
    champion_status: str | None = None
    n_fresh: int = 0
    n_fresh_holdout: int = 0
    live_mse: float | None = None
    edge_mse: float | None = None
    reference_mse: float | None = None
    champion_mse: float | None = None
    challenger_mse: float | None = None
    kept: str = KEPT_CHAMPION
    decision: str | None = None


DECISION_COLUMNS = tuple(f.name for f in dataclasses.fields(RetrainDecision))
RETRAIN_DDL = f"{RESULT_DDL}, {dataclass_ddl(RetrainDecision)}"


def reference_mse(entry: DeviceEntry | None) -> float | None:
    """Return the hold-out MSE of the model that serves the device, as the champion's manifest recorded it."""
    if entry is None:
        return None
    metrics = entry.holdout if entry.status == "trained" else entry.fleet_holdout
    return None if metrics is None else metrics.mse


def pick_reasons(
    entry: DeviceEntry | None, n_fresh: int, live_mse: float, policy: RetrainPolicy, *, edge_alert: bool = False
) -> list[str]:
    """Return why a device with `n_fresh` usable fresh rows needs a challenger (empty: it does not).

    `edge_alert`: the edge's drift monitor raised an alert for the device since the cutoff; it
    picks the device even when the fresh rows alone do not show the drift (e.g. fewer rows here
    than the edge judged, or the drift began before the cutoff).
    """
    if entry is None:
        return ["new_device"]
    reasons: list[str] = [entry.status] if entry.status in ("failed", "skipped", "fallback") else []
    reference = reference_mse(entry)
    if reference is not None and n_fresh >= policy.min_drift_rows and live_mse > policy.drift_factor * reference:
        reasons.append("drift")
    elif edge_alert and n_fresh >= policy.min_drift_rows:
        reasons.append("edge_drift")
    built_from = entry.n_train + entry.n_holdout  # 0 for devices that never had a model: picked above
    if built_from > 0 and n_fresh >= policy.new_data_factor * built_from:
        reasons.append("new_data")
    return reasons


def edge_drift_devices(lake: Path, since: datetime) -> frozenset[str]:
    """Return the devices the edge raised a drift alert for at or after `since`, from `<lake>/_events`."""
    found: set[str] = set()
    for alert in read_drift_alerts(Path(lake)):
        device_id = alert.get("device_id")
        try:
            at = datetime.fromisoformat(str(alert.get("ts")))
        except ValueError:
            logger.warning("skipped a drift alert with an unreadable ts: %r", alert.get("ts"))
            continue
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        if isinstance(device_id, str) and at >= since:
            found.add(device_id)
    return frozenset(found)


def drift_start(squared_errors: np.ndarray, min_after: int, reference_mse: float | None, min_ratio: float = 2.0) -> int:
    """Return where the champion's error jumps (0: no rise found), by CUSUM over the squared errors.

    Rows before a device's concept drift follow the old relation; a challenger trained on them
    as well learns a blend of the two and serves neither. One change point: the split where the
    cumulative error departs most from its overall trend while the mean after it is higher,
    found in O(n) with cumulative sums.
    """
    n = len(squared_errors)
    min_before = max(1, min_after // 2)  # a handful of lucky early rows is not an "old relation"
    if n < min_before + min_after:
        return 0
    # On a log scale: squared errors are heavy-tailed, and a few large ones would pull the split.
    cumulative = np.concatenate([[0.0], np.cumsum(np.log1p(squared_errors))])
    splits = np.arange(min_before, n - min_after + 1)
    before = cumulative[splits] / splits
    after = (cumulative[n] - cumulative[splits]) / (n - splits)
    rise = after - before
    # |S_k - k/n S_n| = k(n-k)/n * (mean after - mean before): weights the rise by how many rows
    # back it, so a few large errors near the end do not win over a sustained jump.
    statistic = np.where(rise > 0, splits * (n - splits) / n * rise, 0.0)
    best = int(np.argmax(statistic))
    if statistic[best] <= 0:
        return 0
    split = int(splits[best])
    # Only a real drift counts: before the split the champion still fits (within `min_ratio` of
    # its hold-out error), after it it does not. Errors that wander with the features' daily
    # cycles while the champion is off all along give no split: the challenger then uses every row.
    if reference_mse is None:
        return 0
    bound = min_ratio * reference_mse
    fits_before = float(np.mean(squared_errors[:split])) <= bound
    off_after = float(np.mean(squared_errors[split:])) > bound
    return split if fits_before and off_after else 0


def fresh_readings(frame: pd.DataFrame, features: tuple[str, ...]) -> pd.DataFrame:
    """Return one usable row per reading (finite features and label), oldest first."""
    readings = frame.drop_duplicates(subset=[TS_COLUMN, SEQ_COLUMN]) if SEQ_COLUMN in frame else frame
    values = readings[[*features, LABEL_COLUMN]].to_numpy(dtype=float)
    usable = np.isfinite(values).all(axis=1) & readings[TS_COLUMN].notna().to_numpy()
    return readings[usable].sort_values(TS_COLUMN, kind="stable")


def edge_mse(frame: pd.DataFrame, bundle_version: str) -> float | None:
    """Return the MSE the edge's own predictions from this bundle had on labelled readings, if any."""
    if PREDICTION_VALUE_COLUMN not in frame:
        return None
    served = frame[
        (frame[SOURCE_COLUMN] == INFERENCE_SOURCE)
        & (frame[PREDICTION_VERSION_COLUMN] == bundle_version)
        & np.isfinite(frame[PREDICTION_VALUE_COLUMN].to_numpy(dtype=float))
        & np.isfinite(frame[LABEL_COLUMN].to_numpy(dtype=float))
    ]
    if served.empty:
        return None
    return float(np.mean((served[PREDICTION_VALUE_COLUMN].to_numpy(float) - served[LABEL_COLUMN].to_numpy(float)) ** 2))


def _mse(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    prediction = np.asarray(model.predict(x), dtype=float)
    if not np.isfinite(prediction).all():
        return math.inf  # a model that predicts NaN/inf never wins a comparison
    return holdout_metrics(y, prediction)[0]


def retrain_device(
    frame: pd.DataFrame, policy: RetrainPolicy, champion: Champion
) -> tuple[DeviceResult, RetrainDecision]:
    """Decide whether one device needs a challenger, train it, and keep the better model; never raise."""
    started = time.perf_counter()
    device_id = str(frame[DEVICE_COLUMN].iloc[0]) if len(frame) else "<empty>"
    try:
        with warnings.catch_warnings():
            # Outcomes are recorded per device; library warnings would flood worker logs.
            warnings.simplefilter("ignore")
            result, decision = _retrain_device(frame, policy, champion, device_id)
    except Exception as err:  # one device failing never fails the batch
        logger.warning("device %s: retraining failed: %s", device_id, err)
        result = DeviceResult.failed(device_id, "exception", f"{type(err).__name__}: {err}", n_rows=len(frame))
        decision = RetrainDecision(
            champion_status=champion.entry.status if champion.entry else None,
            decision=f"retraining raised {type(err).__name__}: {err}; champion kept"[:2000],
        )
    if result.status == NOT_TRAINED:
        return result, decision
    return dataclasses.replace(result, train_s=time.perf_counter() - started), decision


def _retrain_device(
    frame: pd.DataFrame, policy: RetrainPolicy, champion: Champion, device_id: str
) -> tuple[DeviceResult, RetrainDecision]:
    features = policy.training.features
    is_fresh = frame[FRESH_COLUMN].to_numpy(dtype=bool)
    fresh = fresh_readings(frame[is_fresh], features)
    n_fresh = len(fresh)
    base: dict[str, Any] = {
        "champion_status": champion.entry.status if champion.entry else None,
        "n_fresh": n_fresh,
        "edge_mse": edge_mse(frame[is_fresh], policy.bundle_version),
        "reference_mse": reference_mse(champion.entry),
    }
    not_trained = DeviceResult(device_id=device_id, status=NOT_TRAINED)
    if n_fresh == 0:
        return not_trained, RetrainDecision(**base, decision="no usable fresh rows (finite features and label)")
    x = fresh[list(features)].to_numpy(dtype=float)
    y = fresh[LABEL_COLUMN].to_numpy(dtype=float)
    live_mse = _mse(champion.served, x, y)
    base["live_mse"] = live_mse
    reasons = pick_reasons(champion.entry, n_fresh, live_mse, policy, edge_alert=device_id in policy.edge_drift_devices)
    if not reasons:
        return not_trained, RetrainDecision(**base, decision=_not_picked_detail(champion.entry, live_mse, policy))
    base["pick_reasons"] = ",".join(reasons)
    if "drift" in reasons or "edge_drift" in reasons:
        # Train and judge on the rows after the drift only (they are what the device does now).
        min_after = policy.training.min_rows + policy.min_fresh_holdout_rows
        errors = (np.asarray(champion.served.predict(x), dtype=float) - y) ** 2
        start = drift_start(errors, min_after, reference_mse(champion.entry), policy.drift_factor)
        if start:
            fresh = fresh.iloc[start:]
            n_fresh = len(fresh)
            base["n_fresh"] = n_fresh
    n_holdout = min(n_fresh, max(policy.min_fresh_holdout_rows, math.ceil(n_fresh * policy.fresh_holdout_fraction)))
    base["n_fresh_holdout"] = n_holdout
    holdout = fresh.iloc[n_fresh - n_holdout :]
    train = fresh.iloc[: n_fresh - n_holdout]
    if policy.use_history:
        # Prior rows join the training side only, and only from before the fresh hold-out.
        prior = frame[~is_fresh]
        prior_ts = pd.to_datetime(prior[TS_COLUMN], utc=True)
        prior = prior[prior_ts < pd.to_datetime(holdout[TS_COLUMN], utc=True).min()]
        train = pd.concat([prior, train], ignore_index=True)
    columns = [DEVICE_COLUMN, TS_COLUMN, *features, LABEL_COLUMN]
    # With too few fresh rows the training side is empty; the result still names the device.
    challenger = dataclasses.replace(train_device(train[columns], policy.training, champion.fleet), device_id=device_id)
    x_holdout = holdout[list(features)].to_numpy(dtype=float)
    y_holdout = holdout[LABEL_COLUMN].to_numpy(dtype=float)
    champion_mse = _mse(champion.served, x_holdout, y_holdout)
    base["champion_mse"] = champion_mse
    if challenger.joblib_blob is None:
        detail = f"challenger {challenger.status} ({challenger.reason}); champion kept"
        return challenger, RetrainDecision(**base, decision=detail)
    # Compare what each side would serve: a `fallback` challenger is served by the fleet model.
    model = joblib.load(io.BytesIO(challenger.joblib_blob)) if challenger.status == "trained" else champion.fleet
    challenger_mse = _mse(model, x_holdout, y_holdout)
    wins = challenger_mse < champion_mse * (1.0 - policy.improvement_margin)
    verdict = "challenger wins" if wins else "champion kept"
    return challenger, RetrainDecision(
        **base,
        challenger_mse=challenger_mse,
        kept=KEPT_CHALLENGER if wins else KEPT_CHAMPION,
        decision=f"{verdict}: fresh hold-out mse {challenger_mse:.4g} vs champion {champion_mse:.4g}",
    )


def _not_picked_detail(entry: DeviceEntry | None, live_mse: float, policy: RetrainPolicy) -> str:
    reference = reference_mse(entry)
    if entry is None or reference is None:
        return "not picked"
    needed = math.ceil(policy.new_data_factor * (entry.n_train + entry.n_holdout))
    return (
        f"not picked: live mse {live_mse:.4g} within {policy.drift_factor:g}x hold-out mse {reference:.4g}; "
        f"fewer than {needed} fresh rows"
    )


def decision_frame(result: DeviceResult, decision: RetrainDecision) -> pd.DataFrame:
    """Return one device's challenger result and decision as one row matching RETRAIN_DDL."""
    frame = results_frame([result])
    for name in DECISION_COLUMNS:
        frame[name] = [getattr(decision, name)]
    return frame


# --- Spark wiring --------------------------------------------------------------------------------

_READERS: dict[tuple[str, str], BundleReader] = {}


def _champion_reader(bundle_dir: str, bundle_version: str) -> BundleReader:
    # One reader per Python worker, keyed by version too: reused workers outlive a bundle rewritten in place.
    key = (bundle_dir, bundle_version)
    if key not in _READERS:
        _READERS.clear()
        _READERS[key] = BundleReader(Path(bundle_dir), runtime="joblib", cache_bytes=64 << 20)
    return _READERS[key]


def champion_for(reader: BundleReader, device_id: str) -> Champion:
    """Return the champion bundle's entry and serving models for one device (sha256-checked on load)."""
    fleet = reader.model(Route("fleet", None, "no_model"))
    route = reader.route(device_id)
    served = fleet if route.kind == "fleet" else reader.model(route)
    return Champion(entry=reader.manifest.devices.get(device_id), served=served, fleet=fleet)


def make_retrain_udf(policy: RetrainPolicy, bundle_dir: Path) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Return the grouped-map function that retrains one device per call."""
    bundle_path = str(bundle_dir.resolve())

    def retrain_device_udf(pdf: pd.DataFrame) -> pd.DataFrame:
        limit_native_threads()
        device_id = str(pdf[DEVICE_COLUMN].iloc[0])
        try:
            champion = champion_for(_champion_reader(bundle_path, policy.bundle_version), device_id)
        except Exception as err:  # an unreadable champion model keeps the champion entry as it is
            logger.warning("device %s: cannot load the champion's model: %s", device_id, err)
            failed = DeviceResult.failed(device_id, "champion_unreadable", f"{type(err).__name__}: {err}")
            return decision_frame(failed, RetrainDecision(decision=f"champion model unreadable: {err}"[:2000]))
        return decision_frame(*retrain_device(pdf, policy, champion))

    return retrain_device_udf


def read_lake_spark(spark: SparkSession, lake: Path, features: tuple[str, ...]) -> DataFrame:
    """Read the telemetry lake into typed columns, with the bookkeeping columns retraining uses."""
    if history_format(lake) not in ("lake", "parquet"):
        raise HistoryError(f"--lake {lake} is not a telemetry lake (<lake>/date=YYYY-MM-DD/part-*.parquet)")
    try:
        # Files from different writers may lack the prediction columns: merge their schemas.
        df = spark.read.option("mergeSchema", "true").parquet(str(lake))
    except Exception as err:  # Spark's AnalysisException and Py4J errors carry the cause in the text
        raise HistoryError(f"Cannot read the lake {lake}: {spark_error_text(err)}") from err
    check_columns(df.columns, features)

    def optional(name: str, spark_type: str) -> Any:
        column = F.col(name) if name in df.columns else F.lit(None)
        return column.cast(spark_type).alias(name)

    return df.select(
        F.col(DEVICE_COLUMN).cast("string").alias(DEVICE_COLUMN),
        timestamp_column(df.schema[TS_COLUMN].dataType).alias(TS_COLUMN),
        optional(SEQ_COLUMN, "bigint"),
        *(F.col(c).cast("double").alias(c) for c in features),
        F.col(LABEL_COLUMN).cast("double").alias(LABEL_COLUMN),
        optional(PREDICTION_VALUE_COLUMN, "double"),
        optional(PREDICTION_VERSION_COLUMN, "string"),
        optional(SOURCE_COLUMN, "string"),
        F.lit(True).alias(FRESH_COLUMN),
        *([F.col(DATE_COLUMN)] if DATE_COLUMN in df.columns else []),
    ).where(F.col(DEVICE_COLUMN).isNotNull())


def spark_error_text(err: Exception) -> str:
    """Return the JVM exception messages inside a Spark/Py4J error, without the stack trace."""
    lines = str(err).splitlines()
    causes = [line.split("Exception: ", 1)[1] for line in lines if "Exception: " in line]
    unique = list(dict.fromkeys(causes))[:2]
    return "; ".join(unique) if unique else lines[0] if lines else type(err).__name__


def since_cutoff(df: DataFrame, cutoff: datetime) -> DataFrame:
    """Keep the rows at or after `cutoff`."""
    if DATE_COLUMN in df.columns:
        # The lake's UTC-day partitions: Spark skips older days' files instead of opening each one.
        df = df.where(F.col(DATE_COLUMN) >= F.lit(cutoff.astimezone(UTC).date()))
    return df.where(F.col(TS_COLUMN) >= F.timestamp_seconds(F.lit(cutoff.timestamp())))


def labelled(df: DataFrame) -> DataFrame:
    """Keep the rows with ground truth: a NaN or null label is unusable for training and scoring."""
    return df.where(F.col(LABEL_COLUMN).isNotNull() & ~F.isnan(F.col(LABEL_COLUMN)))


def with_prior_history(spark: SparkSession, fresh: DataFrame, history: Path, features: tuple[str, ...]) -> DataFrame:
    """Add prior history rows (marked not fresh) of the devices that have fresh rows."""
    prior, _ = read_history_spark(spark, history, features)
    devices = fresh.select(DEVICE_COLUMN).distinct()
    prior = prior.join(F.broadcast(devices), DEVICE_COLUMN, "left_semi").select(
        DEVICE_COLUMN,
        TS_COLUMN,
        F.lit(None).cast("bigint").alias(SEQ_COLUMN),
        *features,
        LABEL_COLUMN,
        F.lit(None).cast("double").alias(PREDICTION_VALUE_COLUMN),
        F.lit(None).cast("string").alias(PREDICTION_VERSION_COLUMN),
        F.lit(None).cast("string").alias(SOURCE_COLUMN),
        F.lit(False).alias(FRESH_COLUMN),
    )
    return fresh.unionByName(prior, allowMissingColumns=True)


def retrain_all_devices(df: DataFrame, policy: RetrainPolicy, bundle_dir: Path) -> DataFrame:
    """Return the lazy per-device frame: `groupBy(device_id).applyInPandas(retrain_device_udf)`."""
    return df.groupBy(DEVICE_COLUMN).applyInPandas(make_retrain_udf(policy, bundle_dir), schema=RETRAIN_DDL)


def _empty_lake_error(lake_rows: DataFrame, lake: Path, cutoff: datetime) -> EdgefleetError:
    """Say why the lake gave no training rows: nothing since the cutoff, or nothing labelled."""
    since = since_cutoff(lake_rows, cutoff)
    row = lake_rows.agg(F.max(TS_COLUMN).alias("newest"), F.count(F.lit(1)).alias("rows")).first()
    newest, n_rows = (row["newest"], row["rows"]) if row is not None else (None, 0)
    if n_rows == 0:
        return EdgefleetError(f"The lake {lake} has no readings; run the edge (or `edgefleet edge`) to fill it")
    if since.limit(1).count() == 0:
        return EdgefleetError(
            f"The lake {lake} has no readings since {cutoff:%Y-%m-%dT%H:%M:%SZ} (newest: {newest}); "
            "pass an earlier --since"
        )
    return EdgefleetError(
        f"The lake {lake} has readings since {cutoff:%Y-%m-%dT%H:%M:%SZ} but none with a label; "
        "retraining needs devices that report ground truth (`label`)"
    )


# --- the job --------------------------------------------------------------------------------------


@dataclass
class RetrainOutcome:
    """What a retraining run decided and produced, and how long each phase took."""

    decisions: pd.DataFrame
    bundle_dir: Path
    bundle_version: str
    manifest: BundleManifest
    champion_version: str
    cutoff: datetime
    alias_moved: bool
    manifest_path: Path
    summary: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    tracking_uri: str | None = None
    registered: RegisteredBundle | None = None
    previous_champion: str | None = None

    @property
    def improved_devices(self) -> list[str]:
        """Return the devices whose challenger replaced the champion."""
        return sorted(self.decisions.loc[self.decisions["kept"] == KEPT_CHALLENGER, "device_id"])


DECISION_TABLE_COLUMNS = {
    "device_id": "device_id",
    "pick_reasons": "reasons",
    "champion_status": "champion_status",
    "n_fresh": "n_fresh",
    "n_fresh_holdout": "n_fresh_holdout",
    "live_mse": "live_mse",
    "edge_mse": "edge_mse",
    "reference_mse": "reference_mse",
    "champion_mse": "champion_mse",
    "challenger_mse": "challenger_mse",
    "status": "challenger_status",
    "n_train": "challenger_n_train",
    "reason": "challenger_reason",
    "family": "challenger_family",
    "kept": "kept",
    "decision": "detail",
}


def decision_table(results: pd.DataFrame, champion: BundleManifest) -> pd.DataFrame:
    """Return one row per device (lake devices and every champion device): why picked, both MSEs, which kept."""
    table = results[list(DECISION_TABLE_COLUMNS)].rename(columns=DECISION_TABLE_COLUMNS)
    not_trained = table["challenger_status"] == NOT_TRAINED
    table["challenger_status"] = table["challenger_status"].mask(not_trained)
    table["challenger_n_train"] = table["challenger_n_train"].astype("Int64").mask(not_trained)
    absent = sorted(set(champion.devices) - set(table["device_id"]))
    if absent:
        rows = pd.DataFrame(
            {
                "device_id": absent,
                "champion_status": [champion.devices[d].status for d in absent],
                "n_fresh": 0,
                "n_fresh_holdout": 0,
                "reference_mse": [reference_mse(champion.devices[d]) for d in absent],
                "kept": KEPT_CHAMPION,
                "detail": "no labelled lake rows since the cutoff",
            }
        )
        table = pd.concat([table, rows], ignore_index=True)
    return table.sort_values("device_id", ignore_index=True)


def check_champion(bundle: Path) -> BundleManifest:
    """Return the champion's manifest once its files verify and its models load in this environment."""
    champion = read_manifest(bundle)
    problems = verify_bundle(bundle)
    if problems:
        listed = "; ".join(str(p) for p in problems[:3])
        raise BundleError(
            f"Champion bundle {bundle} does not match its manifest ({len(problems)} problem(s)): {listed}"
        )
    built, here = champion.libraries.get("scikit-learn"), library_versions().get("scikit-learn")
    if built != here:
        # Carried-over models must load next to new ones on the edge: one scikit-learn per bundle.
        raise BundleError(
            f"Champion bundle {bundle} was built with scikit-learn {built}, this environment has {here}; "
            "run a full `edgefleet train` instead"
        )
    return champion


def run_retrain(settings: RetrainSettings, on_progress: ProgressCallback | None = None) -> RetrainOutcome:
    """Run one retraining session end to end."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    champion = check_champion(settings.bundle)
    history_format(settings.lake)  # a missing lake fails here, before the JVM starts
    cutoff = parse_since(settings.since, datetime.now(UTC)) if settings.since else _created_at(champion)
    policy = settings.policy(champion)
    flagged = edge_drift_devices(settings.lake, cutoff)
    if flagged:
        logger.info("%d device(s) flagged by edge drift alerts since %s", len(flagged), cutoff)
        policy = policy.model_copy(update={"edge_drift_devices": flagged})
    logger.info("retraining from %s rows since %s against bundle %s", settings.lake, cutoff, champion.bundle_version)
    with spark_session(settings.master, settings.driver_memory, app_name="edgefleet-retrain") as handle:
        timings["jvm_start_s"] = handle.jvm_start_s
        phase = time.perf_counter()
        spark = handle.session
        lake_rows = read_lake_spark(spark, settings.lake, champion.features)
        rows = labelled(since_cutoff(lake_rows, cutoff))
        if settings.prior_history is not None:
            rows = with_prior_history(spark, rows, settings.prior_history, champion.features)
        n_partitions = training_partitions(default_parallelism(spark))
        spark.conf.set("spark.sql.shuffle.partitions", str(n_partitions))
        result_df = retrain_all_devices(rows.repartition(n_partitions, DEVICE_COLUMN), policy, settings.bundle)
        if on_progress is not None:
            with StageProgress(spark, on_progress):
                results = result_df.toPandas()
        else:
            results = result_df.toPandas()
        if results.empty:
            raise _empty_lake_error(lake_rows, settings.lake, cutoff)
        timings["retrain_s"] = time.perf_counter() - phase

    decisions = decision_table(results, champion)
    summary = summarize_decisions(decisions)
    logger.info(
        "picked %d devices %s, %d improved", summary["picked"], summary["picked_by_reason"], summary["improved"]
    )
    tracker = None if settings.tracking == "off" else Tracker(settings.tracking_uri, settings.experiment, "scalable")
    run_id = tracker.start(_params(settings, champion, cutoff), run_name="edgefleet-retrain") if tracker else None
    try:
        phase = time.perf_counter()
        adopted = results[results["kept"] == KEPT_CHALLENGER]
        manifest = merge_bundle(settings.out, settings.bundle, champion, adopted, run_id)
        timings["merge_s"] = time.perf_counter() - phase

        phase = time.perf_counter()
        variables = deployment_variables(
            manifest.bundle_version, edgefleet.__version__, settings.image_registry, settings.manifest_variables
        )
        manifest_path = write_deployment_manifest(settings.template, settings.manifest_path, variables)
        timings["manifest_s"] = time.perf_counter() - phase

        phase = time.perf_counter()
        registered, previous, alias_moved = None, None, False
        if tracker is not None:
            previous = tracker.champion_version(settings.registered_model)
            metrics = _metrics(summary, timings)
            registered = tracker.finish(
                metrics, decisions, [], settings.out, champion.features, settings.registered_model, claim_champion=False
            )
            if registered is not None and summary["fleet_improved"]:
                tracker.set_champion(registered.name, registered.version)
                registered = dataclasses.replace(registered, champion=True)
                alias_moved = True
            assert run_id is not None
            tracker.client.set_tag(run_id, "champion_alias_moved", str(alias_moved).lower())
        timings["tracking_s"] = time.perf_counter() - phase
    except BaseException:
        if tracker:
            tracker.abort()
        raise
    timings["end_to_end_s"] = time.perf_counter() - started
    return RetrainOutcome(
        decisions=decisions,
        bundle_dir=settings.out,
        bundle_version=manifest.bundle_version,
        manifest=manifest,
        champion_version=champion.bundle_version,
        cutoff=cutoff,
        alias_moved=alias_moved,
        manifest_path=manifest_path,
        summary=summary,
        timings_s=timings,
        run_id=run_id,
        tracking_uri=tracker.tracking_uri if tracker else None,
        registered=registered,
        previous_champion=previous,
    )


def _created_at(manifest: BundleManifest) -> datetime:
    created = datetime.fromisoformat(manifest.created_at)
    return created.replace(tzinfo=UTC) if created.tzinfo is None else created


def _params(settings: RetrainSettings, champion: BundleManifest, cutoff: datetime) -> dict[str, Any]:
    params: dict[str, Any] = settings.model_dump(exclude={"manifest_variables"})
    params.update(champion_bundle_version=champion.bundle_version, cutoff=cutoff.isoformat(timespec="seconds"))
    return params


def _metrics(summary: dict[str, Any], timings: dict[str, float]) -> dict[str, float]:
    metrics: dict[str, float] = {
        "devices": float(summary["devices"]),
        "devices_picked": float(summary["picked"]),
        "devices_improved": float(summary["improved"]),
        "devices_kept_champion": float(summary["kept_champion"]),
        "fleet_improved": float(summary["fleet_improved"]),
    }
    metrics.update({f"picked_{reason}": float(n) for reason, n in summary["picked_by_reason"].items()})
    for name in ("fresh_mse_champion", "fresh_mse_merged"):
        if summary[name] is not None:
            metrics[name] = summary[name]
    metrics.update(timings)
    return metrics
