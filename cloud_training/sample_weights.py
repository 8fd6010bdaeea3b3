"""A cheaper sample-weight check for the decision trees our families build, with the same results.

scikit-learn's trees check their `sample_weight` on every fit, even when the ensemble building
them (gradient boosting's subsample mask, a forest's bootstrap counts) has just made that array
itself. From 1.9 the check goes through `check_array` and its dataframe detection: ~130 us per
tree, 60 trees per boosting fit, 15-19% of a device's training CPU (py-spy on the serial loop).

The fast path answers only for what that check would hand back without a question: a plain
1-D ndarray as long as a plain ndarray `X`, finite and not all zero, asked for as float64, and
either C-contiguous float64 (returned as it is) or integer (a forest's bootstrap counts,
returned as the float64 copy the check makes). Anything else (lists, other dtypes, NaN, all zeros, sparse or array-API
inputs, other keyword arguments) goes to scikit-learn's own check, which converts it or raises
its own error. So every call returns or raises what it did before; `tests/cloud_training/
test_sample_weights.py` holds the two to the same answers, and the families' models to the same
predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["lean_check"]


def lean_check(original: Callable[..., Any]) -> Callable[..., Any]:
    """Return `original` (scikit-learn's `_check_sample_weight`) with a fast path for arrays it would return as-is."""

    def check(sample_weight: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        if (
            not args
            and kwargs.keys() <= {"dtype"}
            and kwargs.get("dtype") in (None, np.float64)
            and type(sample_weight) is np.ndarray
            and type(x) is np.ndarray
            and sample_weight.ndim == 1
            and x.ndim >= 1
            and sample_weight.shape[0] == x.shape[0]
        ):
            if sample_weight.dtype.kind in "iu":  # a forest's bootstrap counts: the float64 copy the check makes
                weights = sample_weight.astype(np.float64)
            elif sample_weight.dtype == np.float64 and sample_weight.flags.c_contiguous:
                weights = sample_weight
            else:
                return original(sample_weight, x, *args, **kwargs)
            if np.isfinite(weights).all() and weights.any():
                return weights
        return original(sample_weight, x, *args, **kwargs)

    check.__wrapped__ = original  # type: ignore[attr-defined]
    return check
