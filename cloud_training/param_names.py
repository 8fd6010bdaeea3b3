"""scikit-learn's estimator parameter names, read from each class's `__init__` once instead of on every clone.

`BaseEstimator._get_param_names` builds an `inspect.signature` of the class's `__init__` each
time `get_params`, `set_params` or `clone` runs: a forest clones its tree and sets its seed for
every tree it builds, ~36 us each, ~5% of a device's training CPU. A signature cannot change
while the class keeps the same `__init__`, so the names are kept per (class, `__init__`) and handed
out as a new list, as before. A class whose signature scikit-learn refuses (`*args`) is refused
every time, with scikit-learn's own error.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["kept_param_names"]


def kept_param_names(original: Callable[[type], list[str]]) -> Callable[[type], list[str]]:
    """Return `original` (the function behind `BaseEstimator._get_param_names`), keeping each class's answer."""
    kept: dict[type, tuple[object, list[str]]] = {}

    def param_names(cls: type) -> list[str]:
        init = cls.__init__  # type: ignore[misc]
        entry = kept.get(cls)
        if entry is None or entry[0] is not init:
            entry = kept[cls] = (init, original(cls))
        return list(entry[1])

    param_names.__wrapped__ = original  # type: ignore[attr-defined]
    return param_names
