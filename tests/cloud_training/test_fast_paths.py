"""Every family fits the same model with scikit-learn's fast paths in place as without them."""

import importlib
import pickle

import numpy as np
import pytest
from sklearn.tree import _classes

from cloud_training.families import FLEET_FAMILIES, make_estimator, trusted_fitting
from cloud_training.fast_paths import FAST_PATHS, fast_paths_off, install_fast_paths, original_of

pytestmark = pytest.mark.fast


def fleet_rows(seed=3, n=400):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return x, 3.0 * x[:, 0] + np.sin(x[:, 1]) + rng.normal(0.0, 0.1, n)


@pytest.mark.parametrize("family", sorted(FLEET_FAMILIES))
def test_every_family_fits_the_same_model_with_and_without_the_fast_paths(family):
    x, y = fleet_rows()
    with trusted_fitting():
        fast = make_estimator(family, seed=11).fit(x, y)
        with fast_paths_off():
            plain = make_estimator(family, seed=11).fit(x, y)

    assert pickle.dumps(fast) == pickle.dumps(plain)  # every tree, seed and leaf value alike
    assert np.array_equal(fast.predict(x), plain.predict(x))


def test_a_forest_refitted_in_a_loop_stays_the_same_model():
    x, y = fleet_rows()
    with trusted_fitting():
        first = pickle.dumps(make_estimator("random_forest", seed=5).fit(x, y))
        make_estimator("random_forest", seed=6).fit(x, y)  # the kept states are reseeded in between

        assert pickle.dumps(make_estimator("random_forest", seed=5).fit(x, y)) == first


def test_trusted_fitting_puts_every_fast_path_in_place():
    with trusted_fitting():
        pass

    for module_name, name, _ in FAST_PATHS:
        current = importlib.import_module(module_name)
        for part in name.split("."):
            current = getattr(current, part)
        assert getattr(current, "__wrapped__", None) is original_of(module_name, name), name


def test_turning_the_fast_paths_off_puts_scikit_learns_own_back_and_then_ours():
    install_fast_paths()
    with fast_paths_off("check_random_state"):
        assert _classes.check_random_state is original_of("sklearn.tree._classes", "check_random_state")
        assert hasattr(_classes._check_sample_weight, "__wrapped__")

    assert hasattr(_classes.check_random_state, "__wrapped__")
