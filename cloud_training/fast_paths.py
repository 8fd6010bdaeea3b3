"""Install the fast paths for scikit-learn's per-tree overheads, once per process.

Each one wraps a single scikit-learn function, answers only the calls it can answer exactly as
that function would, and hands every other call to it, so a model fitted with them is the model
fitted without them (`tests/cloud_training/test_fast_paths.py` fits every family both ways).
Where a later scikit-learn has moved a function, that path is skipped with one log line and
training runs at scikit-learn's own speed.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cloud_training.loss_average import lean_average
from cloud_training.param_names import kept_param_names
from cloud_training.random_states import reseeded_bootstrap, reseeded_check
from cloud_training.sample_weights import lean_check
from cloud_training.tree_checks import kept_is_classifier, lean_is_fitted

__all__ = ["FAST_PATHS", "fast_paths_off", "install_fast_paths", "original_of"]

logger = logging.getLogger(__name__)

# (module, name in it, wrapper): what each path replaces, and with what.
FAST_PATHS: tuple[tuple[str, str, Callable[[Callable[..., Any]], Callable[..., Any]]], ...] = (
    ("sklearn.tree._classes", "_check_sample_weight", lean_check),
    ("sklearn.tree._classes", "check_random_state", reseeded_check),
    ("sklearn.ensemble._forest", "_generate_sample_indices", reseeded_bootstrap),
    ("sklearn.base", "BaseEstimator._get_param_names", kept_param_names),
    ("sklearn._loss.loss", "BaseLoss.__call__", lean_average),
    ("sklearn.tree._classes", "is_classifier", kept_is_classifier),
    ("sklearn.tree._classes", "check_is_fitted", lean_is_fitted),
)

_lock = threading.Lock()
_installed = False


def install_fast_paths() -> None:
    """Put every fast path in place, once per process."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        for module_name, name, wrap in FAST_PATHS:
            _install(module_name, name, wrap)


def _install(module_name: str, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    owner, attribute = _owner(module_name, name)
    current = vars(owner).get(attribute) if owner is not None else None
    if isinstance(current, classmethod):
        setattr(owner, attribute, classmethod(wrap(current.__func__)))
    elif callable(current):
        setattr(owner, attribute, wrap(current))
    else:
        logger.info("scikit-learn has no %s.%s any more; that fast path is off", module_name, name)


def _owner(module_name: str, name: str) -> tuple[Any, str]:
    owner: Any = importlib.import_module(module_name)
    *path, attribute = name.split(".")
    for part in path:
        owner = getattr(owner, part, None)
    return owner, attribute


def original_of(module_name: str, name: str) -> Callable[..., Any]:
    """Return scikit-learn's own function behind an installed fast path (for tests and benchmarks)."""
    install_fast_paths()
    owner, attribute = _owner(module_name, name)
    current = getattr(owner, attribute)
    function = getattr(current, "__func__", current)
    return getattr(function, "__wrapped__", function)


@contextmanager
def fast_paths_off(*names: str) -> Iterator[None]:
    """Put back scikit-learn's own functions for `names` (every path if none), then ours; for tests and benchmarks."""
    install_fast_paths()
    swapped: list[tuple[Any, str, Any]] = []
    try:
        for module_name, name, _ in FAST_PATHS:
            if names and name not in names:
                continue
            owner, attribute = _owner(module_name, name)
            current = vars(owner)[attribute]
            original = original_of(module_name, name)
            swapped.append((owner, attribute, current))
            setattr(owner, attribute, classmethod(original) if isinstance(current, classmethod) else original)
        yield
    finally:
        for owner, attribute, current in reversed(swapped):
            setattr(owner, attribute, current)
