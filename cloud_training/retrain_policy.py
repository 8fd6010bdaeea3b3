"""Retraining one device: a pure function of its fresh rows, the policy and the champion's models.

`retrain_device(frame, policy, champion)` runs once per device (Spark wires it in
`retrain_spark.py`). It

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

It never raises: any error keeps the champion and says why.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import joblib
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field

from cloud_training.correction import corrected_model, correction_from_json
from cloud_training.device_training import (
    RESULT_DDL,
    DeviceResult,
    TrainingConfig,
    dataclass_ddl,
    holdout_metrics,
    results_frame,
    train_device,
)
from cloud_training.merge import KEPT_CHALLENGER, KEPT_CHAMPION
from edgefleet.bundle import DeviceEntry
from edgefleet.history import DEVICE_COLUMN, LABEL_COLUMN, TS_COLUMN
from edgefleet.lake import (
    PREDICTION_VALUE_COLUMN,
    PREDICTION_VERSION_COLUMN,
    SEQ_COLUMN,
    SOURCE_COLUMN,
    read_drift_alerts,
)

__all__ = [
    "DECISION_COLUMNS",
    "FRESH_COLUMN",
    "NOT_TRAINED",
    "RETRAIN_DDL",
    "Champion",
    "Regressor",
    "RetrainDecision",
    "RetrainPolicy",
    "RetrainThresholds",
    "decision_frame",
    "drift_start",
    "edge_drift_devices",
    "edge_mse",
    "fresh_readings",
    "pick_reasons",
    "reference_mse",
    "retrain_device",
    "served_model",
]

logger = logging.getLogger(__name__)

FRESH_COLUMN = "_fresh"
INFERENCE_SOURCE = "inference"
NOT_TRAINED = "not_trained"


class RetrainThresholds(BaseModel):
    """When a device gets a challenger and when the challenger replaces its champion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drift_factor: float = Field(2.0, gt=1.0)
    min_drift_rows: int = Field(20, ge=1)
    new_data_factor: float = Field(1.0, ge=0.0)
    fresh_holdout_fraction: float = Field(0.25, gt=0.0, lt=0.9)
    min_fresh_holdout_rows: int = Field(10, ge=1)
    improvement_margin: float = Field(0.0, ge=0.0, lt=1.0)


class RetrainPolicy(RetrainThresholds):
    """Everything `retrain_device` needs besides the data; validated once on the driver."""

    training: TrainingConfig
    bundle_version: str
    use_history: bool = False
    # Devices the edge raised a drift alert for since the cutoff (read from the lake's `_events`).
    edge_drift_devices: frozenset[str] = frozenset()


class Regressor(Protocol):
    """A loaded model: scikit-learn estimator or pipeline from a bundle."""

    def predict(self, x: np.ndarray) -> ArrayLike:
        """Return one prediction per row of `x`."""
        ...


@dataclass(frozen=True)
class Champion:
    """The champion's side of one device: its manifest entry and the models the edge serves it with."""

    entry: DeviceEntry | None
    served: Regressor
    fleet: Regressor


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
    if entry.kind is not None:  # `holdout` is the served kind's final-slice error
        metrics = entry.holdout if entry.status in ("trained", "fallback") else entry.fleet_holdout
    else:  # bundles before `kind`: `holdout` is the device model's, whatever serves the device
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


def _mse(model: Regressor, x: np.ndarray, y: np.ndarray) -> float:
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
    if challenger.status not in ("trained", "fallback"):
        detail = f"challenger {challenger.status} ({challenger.reason}); champion kept"
        return challenger, RetrainDecision(**base, decision=detail)
    # Compare what each side would serve, chosen as `edgefleet train` chooses: the device's own
    # model, the (champion's) fleet model, or the fleet model plus the challenger's correction.
    challenger_mse = _mse(served_model(challenger, champion.fleet), x_holdout, y_holdout)
    wins = challenger_mse < champion_mse * (1.0 - policy.improvement_margin)
    verdict = "challenger wins" if wins else "champion kept"
    return challenger, RetrainDecision(
        **base,
        challenger_mse=challenger_mse,
        kept=KEPT_CHALLENGER if wins else KEPT_CHAMPION,
        decision=f"{verdict}: fresh hold-out mse {challenger_mse:.4g} vs champion {champion_mse:.4g}",
    )


def served_model(result: DeviceResult, fleet: Regressor) -> Regressor:
    """Return the model that would serve a trained or fallback result's device."""
    if result.status == "trained" and result.kind == "fleet_corrected" and result.correction is not None:
        return corrected_model(fleet, correction_from_json(result.correction))
    if result.status == "trained" and result.joblib_blob is not None:
        return cast(Regressor, joblib.load(io.BytesIO(result.joblib_blob)))
    return fleet


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
