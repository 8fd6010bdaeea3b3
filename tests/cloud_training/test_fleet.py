"""The fleet model is chosen like a device model, and each device is served the kind that wins on its inner slice."""

import dataclasses
import functools

import numpy as np
import pandas as pd
import pytest

from cloud_training.device_training import TrainingConfig, choose_kind, prepare_device, train_device
from cloud_training.fleet import (
    MAX_PRIOR_ROWS,
    device_samples,
    estimate_prior_rows,
    fleet_from_samples,
    fleet_sample_frame,
    fleet_samples_locally,
    train_fleet_locally,
)
from cloud_training.report import summarize

FEATURES = ("a", "b")
CONFIG = TrainingConfig(features=FEATURES, fleet_rows_per_device=200, onnx=False)


def synthetic_fleet(kind: str, n_devices: int = 40, rows: int = 40, seed: int = 0) -> list[pd.DataFrame]:
    """Return devices whose labels follow shared physics (`pooling`), each its own relation (`device`),
    or shared physics plus an offset each (`correction`)."""
    rng = np.random.default_rng(seed)
    frames = []
    for d in range(n_devices):
        a, b = rng.uniform(-3, 3, rows), rng.uniform(-2, 2, rows)
        if kind == "pooling":
            y = 5 * np.sin(a) + b**2 + rng.normal(0, 2.0, rows)
        elif kind == "device":
            frequency, phase = rng.uniform(1, 3), rng.uniform(0, 6)
            y = 5 * np.sin(frequency * a + phase) + rng.uniform(-3, 3) * b + rng.normal(0, 0.1, rows)
        else:
            shared = 5 * np.sin(a) + 3 * np.cos(2 * b) + a * b
            y = shared + rng.normal(0, 3) + rng.normal(0, 1.0, rows)
        ts = pd.date_range("2026-10-01", periods=rows, freq="5min", tz="UTC")
        frames.append(pd.DataFrame({"device_id": f"d{d:02}", "ts": ts, "a": a, "b": b, "label": y}))
    return frames


SIZES = {"pooling": (40, 40), "device": (30, 120), "correction": (40, 40)}  # devices, rows each


@functools.cache
def trained(kind: str):
    n_devices, rows = SIZES[kind]
    results, fleet = train_fleet_locally(synthetic_fleet(kind, n_devices, rows), CONFIG)
    return kind, results, fleet, summarize(results)


@pytest.fixture(params=list(SIZES))
def trained_fleet(request):
    return trained(request.param)


def test_each_fleet_is_served_the_kind_its_data_calls_for(trained_fleet):
    kind, results, _, summary = trained_fleet
    expected = {"pooling": "fleet", "device": "device", "correction": "fleet_corrected"}[kind]
    kinds = summary["kinds"]
    assert max(kinds, key=kinds.__getitem__) == expected, kinds
    assert kinds[expected] >= 0.6 * len(results)


def test_the_deployed_choice_is_no_worse_than_fleet_only_or_device_only_on_the_final_slice(trained_fleet):
    _, results, _, summary = trained_fleet
    comparison = summary["comparison"]
    assert comparison["rows"] == int(results["n_holdout"].sum())
    assert comparison["deployed_mse"] <= min(comparison["fleet_mse"], comparison["device_mse"])


def test_the_fleet_model_is_chosen_among_families_on_pooled_inner_rows(trained_fleet):
    kind, _, fleet, _ = trained_fleet
    assert set(fleet.candidates) == {"fleet_ridge", "fleet_random_forest", "fleet_gradient_boosting"}
    assert fleet.family == min(fleet.candidates, key=fleet.candidates.__getitem__)
    if kind == "device":  # each device its own relation: the pooled average is linear at best
        assert fleet.family == "fleet_ridge"


def test_a_fallback_device_says_what_won_and_by_how_much():
    _, results, _, _ = trained("pooling")
    row = results[results["status"] == "fallback"].iloc[0]
    assert row["reason"] == "poor_model" and row["kind"] == "fleet"
    assert row["detail"].startswith("fleet model inner mse") and "lower)" in row["detail"]
    assert row["mse"] == row["fleet_mse"]  # the served kind's final error


def test_a_corrected_device_is_trained_with_its_correction_and_keeps_its_own_model_for_an_operator():
    _, results, _, _ = trained("correction")
    row = results[results["kind"] == "fleet_corrected"].iloc[0]
    assert row["status"] == "trained" and row["joblib_blob"] is not None
    assert row["mse"] == row["corrected_mse"] and row["correction"].startswith('{"intercept":')


def test_the_final_slice_plays_no_part_in_the_choice():
    _, _, fleet, _ = trained("correction")
    frame = synthetic_fleet("correction")[5]
    data = prepare_device(frame, CONFIG, "d05")
    inner_rows = set(range(data.n_fit, data.n_fit + data.n_inner))
    final_rows = set(range(len(data.y_train), len(data.y_train) + len(data.y_holdout)))
    assert inner_rows.isdisjoint(final_rows)
    before = train_device(frame, CONFIG, fleet.predictors)
    # Turn the final slice upside down: choosing on it would now pick differently, the choice must not move.
    spoiled = frame.copy()
    spoiled.loc[spoiled.index[-len(data.y_holdout) :], "label"] *= -10.0
    after = train_device(spoiled, CONFIG, fleet.predictors)
    same = ("kind", "status", "family", "inner_device_mse", "inner_fleet_mse", "inner_corrected_mse", "correction")
    assert {f: getattr(after, f) for f in same} == {f: getattr(before, f) for f in same}
    assert after.joblib_blob == before.joblib_blob
    assert after.mse > 10 * before.mse  # the final error itself is reported, not chosen on


def test_a_device_model_needs_more_than_luck_on_a_few_inner_rows_to_be_chosen():
    rng = np.random.default_rng(1)
    fleet_errors = rng.exponential(1.0, 8)
    lucky = fleet_errors * rng.uniform(0.0, 1.8, 8)  # lower on average, but within the noise
    lucky *= 0.9 * fleet_errors.mean() / lucky.mean()
    assert choose_kind({"fleet": fleet_errors, "device": lucky}, margin=0.05) == "fleet"
    assert choose_kind({"fleet": fleet_errors, "device": fleet_errors * 0.2}, margin=0.05) == "device"


def test_the_own_model_must_beat_a_winning_correction_not_only_the_fleet_model():
    rng = np.random.default_rng(2)
    fleet_errors = rng.exponential(4.0, 12) + 4.0
    corrected = fleet_errors * 0.25
    slightly_better = corrected * rng.uniform(0.0, 1.8, 12)  # lower than the correction on average, within its noise
    slightly_better *= 0.95 * corrected.mean() / slightly_better.mean()
    ladder = {"fleet": fleet_errors, "fleet_corrected": corrected}
    assert choose_kind({**ladder, "device": slightly_better}, margin=0.02) == "fleet_corrected"
    assert choose_kind({**ladder, "device": corrected * 0.1}, margin=0.02) == "device"


def test_without_a_fleet_model_the_device_model_serves():
    result = train_device(synthetic_fleet("device", n_devices=1, rows=60)[0], CONFIG)
    assert (result.status, result.kind, result.fleet_mse, result.mse) == ("trained", "device", None, result.device_mse)


def test_corrections_are_shrunk_by_how_much_the_devices_offsets_stand_out_of_their_noise():
    assert trained("pooling")[2].prior_rows == MAX_PRIOR_ROWS  # offsets are only noise: corrections near nothing
    assert trained("correction")[2].prior_rows < 5  # offsets dwarf the noise: a few rows tell them


def test_the_fleet_sample_holds_fit_and_inner_rows_only_never_the_final_slice():
    frame = synthetic_fleet("pooling", n_devices=1, rows=100)[0]
    data = prepare_device(frame, CONFIG, "d00")
    blocks = device_samples(fleet_sample_frame(frame, CONFIG), CONFIG)
    ((fit, inner),) = blocks
    np.testing.assert_array_equal(fit[:, -1], data.y_fit)
    np.testing.assert_array_equal(inner[:, -1], data.y_inner)
    assert not set(data.y_holdout) & (set(fit[:, -1]) | set(inner[:, -1]))


def test_the_empirical_bayes_shrinkage_without_enough_devices_falls_back_to_the_default():
    @dataclasses.dataclass
    class Zero:
        def predict(self, x):
            return np.zeros(len(x))

    rows = np.column_stack([np.ones((4, 2)), np.arange(4.0)])
    assert estimate_prior_rows(Zero(), [(rows, rows)]) == 30.0


def test_fitting_the_fleet_candidates_on_threads_chooses_and_fits_the_same_model():
    frames = synthetic_fleet("pooling", 40, 40)
    samples = fleet_samples_locally(frames, CONFIG)
    alone, side_by_side = (fleet_from_samples(samples, CONFIG, threads=n) for n in (1, 3))
    assert (side_by_side.family, side_by_side.candidates) == (alone.family, alone.candidates)
    x = np.random.default_rng(1).uniform(-3, 3, (50, 2))
    np.testing.assert_array_equal(side_by_side.model.predict(x), alone.model.predict(x))
    assert side_by_side.prior_rows == alone.prior_rows


def test_a_fleet_family_that_fails_leaves_the_others_in_the_race(monkeypatch):
    import cloud_training.fleet as fleet_module

    real = fleet_module.make_estimator

    def flaky(family, seed):
        if family == "fleet_gradient_boosting":
            raise ValueError("out of memory")
        return real(family, seed)

    monkeypatch.setattr(fleet_module, "make_estimator", flaky)
    fleet = fleet_from_samples(fleet_samples_locally(synthetic_fleet("pooling", 40, 40), CONFIG), CONFIG, threads=2)
    assert "fleet_gradient_boosting" not in fleet.candidates
    assert fleet.family in {"fleet_ridge", "fleet_random_forest"}
