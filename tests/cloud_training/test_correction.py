import numpy as np
import pytest

from cloud_training.correction import corrected_model, correction_from_json, correction_to_json, fit_correction


class Flat:
    def predict(self, x):
        return np.full(len(x), 10.0)


def rows(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 5, (n, 2))
    return x, 2.0 + 0.5 * x[:, 0] + rng.normal(0, 0.1, n)  # residual: offset 2, slope 0.5 on the first feature


def test_a_device_with_many_rows_gets_nearly_its_whole_mean_residual_as_offset():
    x, residual = rows(2_000)
    correction = fit_correction(x, residual, prior_rows=30.0)
    assert correction.intercept == pytest.approx(residual.mean() * 2_000 / 2_030, rel=1e-9)
    assert correction.coef == (0.0, 0.0)


def test_a_correction_shifts_predictions_far_outside_the_devices_range_by_its_offset_only():
    x, residual = rows(200)
    model = corrected_model(Flat(), fit_correction(x, residual, prior_rows=10.0))
    far = np.array([[1e4, -1e4]])
    assert model.predict(far)[0] == pytest.approx(model.predict(x[:1])[0])


def test_a_device_with_few_rows_stays_near_the_fleet_model():
    x, residual = rows(3)
    correction = fit_correction(x, residual, prior_rows=300.0)
    shift = correction.intercept + x @ np.asarray(correction.coef)
    assert np.abs(shift).max() < 0.05 * np.abs(residual).mean()


def test_the_corrected_model_adds_the_correction_to_the_fleet_prediction_in_feature_order():
    x, residual = rows(500)
    correction = fit_correction(x, residual, prior_rows=1.0)
    model = corrected_model(Flat(), correction)
    np.testing.assert_allclose(model.predict(x), 10.0 + correction.intercept + x @ np.asarray(correction.coef))
    assert np.mean(model.predict(x) - 10.0) == pytest.approx(residual.mean(), rel=0.01)


def test_a_correction_survives_the_results_table_as_json():
    correction = fit_correction(*rows(50), prior_rows=5.0)
    assert correction_from_json(correction_to_json(correction)) == correction


def test_a_constant_feature_gives_no_nan():
    x = np.column_stack([np.ones(40), np.linspace(0, 1, 40)])
    correction = fit_correction(x, np.full(40, 3.0), prior_rows=0.0)
    assert correction.coef[0] == 0.0 and correction.intercept == pytest.approx(3.0)
