import dataclasses
import json

import numpy as np
import pytest

from cloud_training.device_training import (
    RESULT_COLUMNS,
    RESULT_DDL,
    TrainingConfig,
    prepare_device,
    results_frame,
    train_device,
)
from cloud_training.fleet import train_fleet_locally
from cloud_training.knobs import EdgeBudget
from edgefleet.feature_reference import FeatureReference
from simulator.history import apply_data_fault, device_history
from simulator.physics import FEATURES
from tests.conftest import END_TS_S

CONFIG = TrainingConfig(features=FEATURES, reference_ts_s=END_TS_S)


def device(device_id="dev-x", rows=300, seed=4):
    return device_history(device_id, seed, rows, END_TS_S, 300.0)


def faulty(fault, device_id="dev-bad"):
    return apply_data_fault(device(device_id), fault, np.random.default_rng(0))


@pytest.fixture(scope="module")
def local_run():
    config = CONFIG.model_copy(update={"fleet_rows_per_device": 300})
    return train_fleet_locally([device(f"dev-{i}") for i in range(12)], config)


@pytest.fixture(scope="module")
def fleet(local_run):
    return local_run[1]


def test_device_models_beat_the_fleet_model_on_their_own_holdout(fleet):
    results = [train_device(device(f"dev-{i}"), CONFIG, fleet.model) for i in range(12)]
    assert all(r.status == "trained" for r in results)
    assert sum(r.mse < r.fleet_mse for r in results) >= 11
    assert np.median([r.mse for r in results]) < 0.2 * np.median([r.fleet_mse for r in results])


def test_the_local_run_trains_each_device_against_the_chosen_fleet_model(local_run, fleet):
    results, _ = local_run
    config = CONFIG.model_copy(update={"fleet_rows_per_device": 300})
    for row in results.itertuples():
        inline = train_device(device(row.device_id), config, fleet.predictors)
        assert (inline.status, inline.family, inline.kind) == (row.status, row.family, row.kind)
        assert inline.fleet_mse == pytest.approx(row.fleet_mse)
        assert inline.corrected_mse == pytest.approx(row.corrected_mse)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("few_rows", "too_few_rows"),
        ("nan_labels", "non_finite_values"),
        ("constant_label", "constant_label"),
        ("stale", "stale_data"),
    ],
)
def test_bad_device_is_skipped_with_a_reason_code(fault, reason):
    result = train_device(faulty(fault), CONFIG)
    assert (result.status, result.reason) == ("skipped", reason)
    assert result.detail and result.joblib_blob is None


def test_a_fit_that_raises_becomes_a_failed_row_carrying_the_error():
    result = train_device(faulty("broken_sensor"), CONFIG)
    assert (result.status, result.reason) == ("failed", "all_candidates_failed")
    assert "ridge: ValueError" in result.detail


def test_an_unexpected_frame_becomes_a_failed_row_not_an_exception():
    result = train_device(device().drop(columns=["load_pct"]), CONFIG)
    assert (result.status, result.reason) == ("failed", "exception")
    assert "KeyError" in result.detail and "load_pct" in result.detail


def test_a_few_bad_rows_are_dropped_and_counted_not_fatal():
    frame = device()
    frame.loc[frame.index[:10], "label"] = np.nan
    result = train_device(frame, CONFIG)
    assert (result.status, result.n_dropped, result.n_rows) == ("trained", 10, 300)


def test_holdout_is_the_most_recent_readings_whatever_the_input_order():
    frame = device()
    data = prepare_device(frame.sample(frac=1.0, random_state=0), CONFIG, "dev-x")
    newest = frame.sort_values("ts").tail(len(data.y_holdout))
    np.testing.assert_allclose(data.y_holdout, newest["label"].to_numpy())
    assert len(data.y_holdout) == 60 and len(data.y_train) == 240


def test_the_inner_slice_is_the_rows_just_before_the_final_holdout_and_as_large():
    frame = device()
    data = prepare_device(frame, CONFIG, "dev-x")
    ordered = frame.sort_values("ts")["label"].to_numpy()
    assert (data.n_fit, data.n_inner, len(data.y_holdout)) == (180, 60, 60)
    np.testing.assert_allclose(data.y_inner, ordered[180:240])
    np.testing.assert_allclose(data.y_fit, ordered[:180])


def test_edge_budget_in_bytes_keeps_only_models_that_fit():
    tight = CONFIG.model_copy(update={"budget": EdgeBudget(max_model_bytes=2_000)})
    result = train_device(device(), tight)
    assert result.family == "ridge" and result.model_bytes <= 2_000


def test_no_candidate_within_the_budget_fails_the_device_with_over_budget():
    impossible = CONFIG.model_copy(update={"budget": EdgeBudget(max_model_bytes=10)})
    result = train_device(device(), impossible)
    assert (result.status, result.reason) == ("failed", "over_budget")
    assert "10 B" in result.detail


def test_device_model_that_does_not_beat_the_fleet_by_the_margin_is_marked_fallback(fleet):
    demanding = CONFIG.model_copy(update={"fleet_margin": 0.999})
    result = train_device(device(), demanding, fleet.model)
    assert (result.status, result.reason, result.kind) == ("fallback", "poor_model", "fleet")
    assert "fleet model inner mse" in result.detail
    assert result.mse == result.fleet_mse  # the served kind's error: the fleet model's
    assert result.joblib_blob is not None  # kept, so an operator can still switch it on


def test_result_rows_match_the_spark_schema():
    frame = results_frame([train_device(device(), CONFIG), train_device(faulty("few_rows"), CONFIG)])
    assert tuple(frame.columns) == RESULT_COLUMNS
    assert [part.split()[0] for part in RESULT_DDL.split(", ")] == list(RESULT_COLUMNS)
    assert len(dataclasses.fields(train_device(device(), CONFIG))) == len(RESULT_COLUMNS)
    assert str(frame["model_bytes"].dtype) == "Int64"


def test_config_rejects_unknown_family_and_says_which_exist():
    with pytest.raises(ValueError, match="use some of: ridge, random_forest, gradient_boosting"):
        TrainingConfig(features=FEATURES, families=("xgboost",))


def test_training_stores_each_features_distribution_for_the_edges_drift_monitor():
    frame = device(rows=400)  # 400 readings every 300 s: 33 hours, more than one daily cycle
    result = train_device(frame, CONFIG)
    references = {name: FeatureReference.from_text(text) for name, text in json.loads(result.feature_reference).items()}
    assert set(references) == set(FEATURES)
    for name, reference in references.items():
        # Ten bins at the training deciles: each holds a tenth of the device's rows.
        assert reference.bins == 10
        shares = reference.bin_counts(frame[name].to_numpy()) / len(frame)
        assert shares == pytest.approx(np.full(10, 0.1), abs=0.02), name


def test_a_device_whose_data_spans_under_a_day_gets_no_feature_reference():
    result = train_device(device(rows=250), CONFIG)  # 250 x 300 s: under 21 hours
    assert result.status == "trained" and result.feature_reference is None
