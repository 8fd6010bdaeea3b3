"""The trees' cheaper sample-weight check gives scikit-learn's own answers, and the same models."""

import numpy as np
import pytest

from cloud_training.fast_paths import original_of
from cloud_training.sample_weights import lean_check

pytestmark = pytest.mark.fast

X = np.zeros((5, 3), dtype=np.float32)


def scikit_learns_check():
    return original_of("sklearn.tree._classes", "_check_sample_weight")


def answer(check, weights, x=X, **kwargs):
    """Return what a check gives back (dtype and values), or the error it raises."""
    try:
        result = check(weights, x, **kwargs)
    except Exception as err:  # the answer compared is the error itself
        return ("raises", type(err), str(err))
    return ("returns", result.dtype, result.shape, result.tolist(), result.flags.c_contiguous)


CASES = {
    "float64 weights": (np.array([1.0, 0.0, 2.0, 1.0, 1.0]), {"dtype": np.float64}),
    "bootstrap counts": (np.array([2, 0, 1, 1, 1]), {"dtype": np.float64}),
    "unsigned counts": (np.array([2, 0, 1, 1, 1], dtype=np.uint32), {"dtype": np.float64}),
    "no dtype asked": (np.array([1.0, 0.5, 2.0, 1.0, 1.0]), {}),
    "float32 weights": (np.array([1.0, 0.5, 2.0, 1.0, 1.0], dtype=np.float32), {"dtype": np.float64}),
    "a strided view": (np.arange(10, dtype=np.float64)[::2] + 1, {"dtype": np.float64}),
    "a list": ([1.0, 1.0, 1.0, 1.0, 1.0], {"dtype": np.float64}),
    "a scalar": (2.0, {"dtype": np.float64}),
    "None": (None, {"dtype": np.float64}),
    "NaN": (np.array([1.0, np.nan, 1.0, 1.0, 1.0]), {"dtype": np.float64}),
    "infinity": (np.array([1.0, np.inf, 1.0, 1.0, 1.0]), {"dtype": np.float64}),
    "all zero": (np.zeros(5), {"dtype": np.float64}),
    "all zero counts": (np.zeros(5, dtype=np.int64), {"dtype": np.float64}),
    "too short": (np.ones(4), {"dtype": np.float64}),
    "two-dimensional": (np.ones((5, 1)), {"dtype": np.float64}),
    "negative, checked": (np.array([1.0, -1.0, 1.0, 1.0, 1.0]), {"ensure_non_negative": True}),
    "copy asked": (np.ones(5), {"copy": True}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fast_check_answers_as_scikit_learns_check_does(case):
    weights, kwargs = CASES[case]
    original = scikit_learns_check()

    assert answer(lean_check(original), weights, **kwargs) == answer(original, weights, **kwargs)


def test_the_fast_check_hands_back_float64_weights_without_a_copy():
    weights = np.array([1.0, 0.0, 2.0, 1.0, 1.0])

    assert lean_check(scikit_learns_check())(weights, X, dtype=np.float64) is weights


def test_the_fast_check_asks_scikit_learn_about_a_non_array_x():
    weights = np.ones(3)
    original = scikit_learns_check()

    assert answer(lean_check(original), weights, x=[[0.0], [1.0], [2.0]]) == answer(
        original, weights, x=[[0.0], [1.0], [2.0]]
    )
