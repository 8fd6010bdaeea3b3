"""Gradient boosting's per-stage loss, averaged without `np.average`'s argument handling, to the same bits.

With `subsample` below 1, gradient boosting records its training and out-of-bag loss after every
stage: two calls of its loss object per tree, each averaging ~450 per-row losses with
`np.average(loss, weights=sample_weight)`. The average itself is a few microseconds; the call
around it (array coercion, dtype resolution, shape and keyword checks) is ~8 us more, ~2% of a
device's training CPU over 60 stages and the refit.

For what gradient boosting passes (float64 1-D arrays of one length, weights that do not sum to
zero) `np.average` computes `np.multiply(loss, weights).sum() / weights.sum()`; the fast path
does exactly that, so `train_score_` and `oob_scores_` keep their bits. Anything else (no
weights, other dtypes or shapes, threads) goes to scikit-learn's own method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["lean_average"]


def lean_average(original: Callable[..., Any]) -> Callable[..., Any]:
    """Return `original` (`BaseLoss.__call__`) with a fast path for float64 weights gradient boosting passes."""

    def average(self: Any, y_true: Any, raw_prediction: Any, sample_weight: Any = None, n_threads: int = 1) -> Any:
        if n_threads == 1 and _plain_vector(sample_weight) and _plain_vector(y_true):
            loss = self.loss(y_true=y_true, raw_prediction=raw_prediction, sample_weight=None, loss_out=None)
            if _plain_vector(loss) and loss.shape == sample_weight.shape:
                scale = sample_weight.sum()
                if scale != 0.0:
                    return np.multiply(loss, sample_weight).sum() / scale
        return original(self, y_true, raw_prediction, sample_weight, n_threads)

    average.__wrapped__ = original  # type: ignore[attr-defined]
    return average


def _plain_vector(array: Any) -> bool:
    return type(array) is np.ndarray and array.ndim == 1 and array.dtype == np.float64
