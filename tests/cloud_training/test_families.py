import numpy as np
import pytest
import sklearn

from cloud_training.families import FLEET_FAMILIES, make_estimator, trusted_fitting

pytestmark = pytest.mark.fast


def rows(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return x, 3.0 * x[:, 0] + np.sin(x[:, 1]) + rng.normal(0.0, 0.1, n)


@pytest.mark.parametrize("family", sorted(FLEET_FAMILIES))
def test_every_family_passes_scikit_learns_parameter_validation(family):
    # trusted_fitting skips these checks in training, so they must hold for the fixed parameters here.
    x, y = rows()
    with sklearn.config_context(skip_parameter_validation=False, assume_finite=False):
        make_estimator(family, seed=7).fit(x, y)


@pytest.mark.parametrize("family", sorted(FLEET_FAMILIES))
def test_trusted_fitting_predicts_exactly_what_checked_fitting_predicts(family):
    x, y = rows()
    checked = make_estimator(family, seed=7).fit(x, y)
    with trusted_fitting():
        trusted = make_estimator(family, seed=7).fit(x, y)
    assert np.array_equal(trusted.predict(x), checked.predict(x))


def test_trusted_fitting_still_refuses_a_finite_reading_that_overflows_float32():
    x, y = rows()
    x[:, 0] = 1e300
    with trusted_fitting(), pytest.raises(ValueError, match="too large"):
        make_estimator("gradient_boosting", seed=7).fit(x, y)


def test_trusted_fitting_ends_with_its_block():
    with trusted_fitting():
        assert sklearn.get_config()["skip_parameter_validation"]
    assert not sklearn.get_config()["skip_parameter_validation"]


def test_an_unknown_family_is_refused_with_the_known_ones_named():
    with pytest.raises(ValueError, match="choose from ridge, random_forest"):
        make_estimator("xgboost", seed=0)
