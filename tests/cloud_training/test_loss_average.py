"""Gradient boosting's averaged loss is the same number on the fast path as through `np.average`."""

import re

import numpy as np
import pytest
from sklearn._loss.loss import AbsoluteError, HalfMultinomialLoss, HalfSquaredError

from cloud_training.fast_paths import original_of
from cloud_training.loss_average import lean_average

pytestmark = pytest.mark.fast

RNG = np.random.default_rng(8)
Y = RNG.normal(size=450) * 40.0
RAW = RNG.normal(size=450)


def answer(call, loss, y, raw, **kwargs):
    try:
        value = call(loss, y_true=y, raw_prediction=raw, **kwargs)
    except Exception as err:  # the answer compared is the error itself
        return ("raises", type(err), re.sub(r" at 0x[0-9a-fA-F]+", "", str(err)))
    return ("returns", type(value), value)


CASES = {
    "boosting's all-ones weights": (HalfSquaredError(), Y, RAW, {"sample_weight": np.ones(450)}),
    "uneven weights": (HalfSquaredError(), Y, RAW, {"sample_weight": RNG.choice([0.5, 1.0, 3.0], 450)}),
    "absolute error": (AbsoluteError(), Y, RAW, {"sample_weight": np.ones(450)}),
    "no weights": (HalfSquaredError(), Y, RAW, {}),
    "float32 weights": (HalfSquaredError(), Y, RAW, {"sample_weight": np.ones(450, dtype=np.float32)}),
    "weights summing to zero": (HalfSquaredError(), Y, RAW, {"sample_weight": np.zeros(450)}),
    "a column of predictions": (HalfSquaredError(), Y, RAW[:, None].copy(), {"sample_weight": np.ones(450)}),
    "multinomial": (
        HalfMultinomialLoss(n_classes=3),
        RNG.integers(0, 3, 450).astype(float),
        RNG.normal(size=(450, 3)),
        {"sample_weight": np.ones(450)},
    ),
    "two threads": (HalfSquaredError(), Y, RAW, {"sample_weight": np.ones(450), "n_threads": 2}),
    "weights too short": (HalfSquaredError(), Y, RAW, {"sample_weight": np.ones(449)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fast_average_is_scikit_learns_to_the_bit(case):
    loss, y, raw, kwargs = CASES[case]
    original = original_of("sklearn._loss.loss", "BaseLoss.__call__")

    assert answer(lean_average(original), loss, y, raw, **kwargs) == answer(original, loss, y, raw, **kwargs)


def test_the_fast_average_matches_over_many_random_fleets():
    original = original_of("sklearn._loss.loss", "BaseLoss.__call__")
    fast = lean_average(original)
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 600))
        y, raw = rng.normal(size=n) * 10.0 ** rng.integers(-3, 5), rng.normal(size=n)
        weights = rng.choice([1.0, 0.5, 2.0], size=n)
        assert fast(HalfSquaredError(), y, raw, weights) == original(HalfSquaredError(), y, raw, weights)
