"""scikit-learn's own decision trees asked, on every fit, what they are and whether they are fitted.

A tree's `fit` asks `is_classifier(self)` (its estimator type, read from the full tags every
time) and then prunes, and pruning starts with `check_is_fitted(self)`, which reads the tags
again. Gradient boosting builds 60 trees per fit and a forest 16: ~35 us a tree, ~3% of a
device's training CPU (py-spy on the serial loop).

Both paths answer only for the four tree classes scikit-learn defines in `sklearn.tree._classes`
(not for subclasses, whose tags may say anything):

- `kept_is_classifier`: the estimator type is set by the class's mixins, so scikit-learn's
  answer is kept per (class, its `__sklearn_tags__`) and asked again if either changes;
- `lean_is_fitted`: a tree whose `fit` has set `tree_` (and which has no `__sklearn_is_fitted__`)
  passes scikit-learn's check, which finds a fitted attribute ending in `_`; any other call,
  an unfitted tree or any argument besides the estimator goes to scikit-learn's check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["kept_is_classifier", "lean_is_fitted"]

TREE_MODULE = "sklearn.tree._classes"


def kept_is_classifier(original: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """Return `original` (scikit-learn's `is_classifier`) keeping its answer per tree class."""
    kept: dict[tuple[type, object], bool] = {}

    def is_classifier(estimator: Any) -> bool:
        cls = type(estimator)
        if cls.__module__ != TREE_MODULE:
            return original(estimator)
        key = (cls, getattr(cls, "__sklearn_tags__", None))
        answer = kept.get(key)
        if answer is None:
            answer = kept[key] = original(estimator)
        return answer

    is_classifier.__wrapped__ = original  # type: ignore[attr-defined]
    return is_classifier


def lean_is_fitted(original: Callable[..., None]) -> Callable[..., None]:
    """Return `original` (scikit-learn's `check_is_fitted`) passing a tree its own fit has finished."""

    def check_is_fitted(estimator: Any, *args: Any, **kwargs: Any) -> None:
        if (
            not args
            and not kwargs
            and type(estimator).__module__ == TREE_MODULE
            and "tree_" in getattr(estimator, "__dict__", ())
            and not hasattr(estimator, "__sklearn_is_fitted__")
        ):
            return None
        return original(estimator, *args, **kwargs)

    check_is_fitted.__wrapped__ = original  # type: ignore[attr-defined]
    return check_is_fitted
