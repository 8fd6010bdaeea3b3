"""The per-device retraining decision, without Spark: who is picked, where drift starts, who keeps the device."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime

import joblib
import numpy as np
import pandas as pd
import pytest

from cloud_training.correction import correction_to_json
from cloud_training.device_training import DeviceResult, TrainingConfig, train_device
from cloud_training.retrain_policy import (
    FRESH_COLUMN,
    Champion,
    RetrainPolicy,
    drift_start,
    edge_drift_devices,
    pick_reasons,
    reference_mse,
    retrain_device,
    served_model,
)
from edgefleet.bundle import Correction, DeviceEntry, HoldoutMetrics
from simulator.history import device_history
from simulator.physics import FEATURES, make_profile

SEED = 11
DEVICE = "dev-00000"
END_TS_S = pd.Timestamp("2026-11-21T08:00:00Z").timestamp()
INTERVAL_S = 300.0


@pytest.fixture(scope="module")
def champion() -> Champion:
    """Train the device's champion on 240 readings of its old relation, as `edgefleet train` would."""
    history = device_history(DEVICE, SEED, 240, END_TS_S - 240 * INTERVAL_S, INTERVAL_S)
    result = train_device(history, TrainingConfig(features=FEATURES))
    assert result.status == "trained" and result.joblib_blob is not None
    assert result.mse is not None and result.mae is not None and result.r2 is not None
    entry = DeviceEntry(
        status="trained",
        family=result.family,
        n_train=result.n_train,
        n_holdout=result.n_holdout,
        holdout=HoldoutMetrics(mse=result.mse, mae=result.mae, r2=result.r2, n=result.n_holdout),
    )
    model = joblib.load(io.BytesIO(result.joblib_blob))
    return Champion(entry=entry, served=model, fleet=model)


def policy() -> RetrainPolicy:
    return RetrainPolicy(training=TrainingConfig(features=FEATURES), bundle_version="v")


def fresh_rows(n_old: int, n_drifted: int) -> pd.DataFrame:
    """Return the device's fresh lake rows: `n_old` readings of its old relation, then `n_drifted` of a new one."""
    profile = make_profile(DEVICE, SEED)
    drifted = dataclasses.replace(profile, weights=tuple(-w for w in profile.weights), bias=profile.bias + 4.0)
    rng = np.random.default_rng(SEED)
    n_rows = n_old + n_drifted
    ts_s = END_TS_S + INTERVAL_S * np.arange(n_rows, dtype=float)
    x = profile.features(ts_s, rng)
    label = np.concatenate([profile.label(x[:n_old], rng), drifted.label(x[n_old:], rng)])
    frame = pd.DataFrame(x, columns=list(FEATURES))
    frame.insert(0, "ts", pd.to_datetime(ts_s, unit="s", utc=True))
    frame.insert(0, "seq", np.arange(n_rows))
    frame.insert(0, "device_id", DEVICE)
    return frame.assign(label=label, **{FRESH_COLUMN: True})


def test_a_drifted_device_gets_a_challenger_trained_after_the_drift_that_replaces_its_champion(champion):
    result, decision = retrain_device(fresh_rows(60, 120), policy(), champion)
    assert decision.pick_reasons == "drift"
    assert decision.n_fresh <= 130  # trained and judged on the rows after the drift, not the 60 before it
    assert result.status == "trained" and decision.kept == "challenger"
    assert decision.challenger_mse is not None and decision.champion_mse is not None
    assert decision.challenger_mse < 0.2 * decision.champion_mse


def test_a_device_that_still_fits_its_champion_is_not_picked(champion):
    result, decision = retrain_device(fresh_rows(60, 0), policy(), champion)
    assert decision.pick_reasons is None and decision.kept == "champion"
    assert decision.decision is not None and decision.decision.startswith("not picked")
    assert result.joblib_blob is None


def test_a_device_whose_champion_cannot_predict_keeps_its_champion(champion):
    class Broken:
        def predict(self, x: np.ndarray) -> np.ndarray:
            raise RuntimeError("corrupt model")

    broken = Champion(entry=champion.entry, served=Broken(), fleet=Broken())
    result, decision = retrain_device(fresh_rows(60, 0), policy(), broken)
    assert (result.status, result.reason) == ("failed", "exception")
    assert decision.kept == "champion" and decision.decision is not None and "corrupt model" in decision.decision


def test_drift_start_finds_where_the_champions_error_jumps():
    rng = np.random.default_rng(0)
    errors = np.concatenate([rng.exponential(0.5, 60), rng.exponential(40.0, 50)])
    assert 55 <= drift_start(errors, min_after=20, reference_mse=0.5) <= 62
    assert drift_start(rng.exponential(0.5, 100), min_after=20, reference_mse=0.5) == 0  # it still fits: no drift
    assert drift_start(rng.exponential(40.0, 100), min_after=20, reference_mse=0.5) == 0  # off all along: no split
    assert drift_start(errors[:25], min_after=20, reference_mse=0.5) == 0  # too short to split


def test_edge_drift_alerts_in_the_lake_flag_their_devices_since_the_cutoff(tmp_path):
    events = tmp_path / "_events"
    events.mkdir()

    def event(body: object) -> str:
        return json.dumps({"kind": "telemetry", "source_module": "inference", "output": "alerts", "body": body})

    drift = {"schema": "edgefleet.alert/1", "kind": "drift", "drift": {"kind": "residual"}}
    lines = [
        event({**drift, "device_id": "dev-1", "ts": "2026-11-02T10:00:00Z"}),
        event({**drift, "device_id": "dev-2", "ts": "2026-10-30T10:00:00Z"}),  # before the cutoff
        event({"schema": "edgefleet.alert/1", "kind": "bundle_version_mismatch", "ts": "2026-11-02T10:00:00Z"}),
        event({**drift, "device_id": "dev-3", "ts": "not a time"}),
        "{not json",
    ]
    (events / "2026-11-21.jsonl").write_text("\n".join(lines) + "\n")

    assert edge_drift_devices(tmp_path, datetime(2026, 11, 1, tzinfo=UTC)) == {"dev-1"}
    assert edge_drift_devices(tmp_path / "no-lake-here", datetime(2026, 11, 1, tzinfo=UTC)) == frozenset()


def test_an_edge_drift_alert_picks_a_device_whose_fresh_rows_alone_look_fine(champion):
    entry = champion.entry
    assert entry is not None and entry.holdout is not None
    fine = entry.holdout.mse  # the live error is what the hold-out promised
    assert pick_reasons(entry, 60, fine, policy()) == []
    assert pick_reasons(entry, 60, fine, policy(), edge_alert=True) == ["edge_drift"]
    assert pick_reasons(entry, 5, fine, policy(), edge_alert=True) == []  # too few fresh rows to retrain on


def test_new_devices_and_devices_without_a_model_of_their_own_are_picked(champion):
    assert pick_reasons(None, 1, 0.0, policy()) == ["new_device"]
    fallback = DeviceEntry(status="fallback", n_train=100, n_holdout=25)
    assert pick_reasons(fallback, 10, 0.0, policy()) == ["fallback"]
    assert champion.entry is not None
    grown = champion.entry.n_train + champion.entry.n_holdout  # as many fresh rows as the model was built from
    assert pick_reasons(champion.entry, grown, 0.0, policy()) == ["new_data"]


def test_a_challenger_is_compared_by_what_would_serve_it_the_fleet_model_plus_its_correction():
    class Fleet:
        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.zeros(len(x))

    correction = Correction(intercept=2.0, coef=(0.0,) * len(FEATURES))
    corrected = DeviceResult(
        device_id=DEVICE, status="trained", kind="fleet_corrected", correction=correction_to_json(correction)
    )
    x = np.ones((3, len(FEATURES)))
    np.testing.assert_allclose(served_model(corrected, Fleet()).predict(x), 2.0)
    fallback = dataclasses.replace(corrected, status="fallback", kind="fleet", joblib_blob=b"unused")
    np.testing.assert_allclose(served_model(fallback, Fleet()).predict(x), 0.0)


def test_the_reference_error_is_the_served_kinds_holdout_error():
    metrics = HoldoutMetrics(mse=1.0, mae=1.0, r2=0.5, n=10)
    fleet_metrics = HoldoutMetrics(mse=9.0, mae=3.0, r2=0.1, n=10)
    served_fleet = DeviceEntry(status="fallback", kind="fleet", holdout=fleet_metrics, fleet_holdout=fleet_metrics)
    correction = Correction(intercept=0.5, coef=(0.0,) * len(FEATURES))
    corrected = DeviceEntry(
        status="trained", kind="fleet_corrected", correction=correction, holdout=metrics, fleet_holdout=fleet_metrics
    )
    old_fallback = DeviceEntry(status="fallback", holdout=metrics, fleet_holdout=fleet_metrics)  # before `kind`
    assert [reference_mse(e) for e in (served_fleet, corrected, old_fallback)] == [9.0, 1.0, 9.0]
