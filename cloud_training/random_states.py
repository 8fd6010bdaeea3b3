"""Random states for the trees our families build, without a fresh Mersenne Twister per tree.

scikit-learn turns an integer seed into a new `RandomState` each time it needs one: a forest twice
per tree (its bootstrap draw, then the tree's splitter), and numpy spends ~70-150 us building each
one's generator before seeding it. A forest of 16 trees asks 33 times; py-spy put it at ~7% of
a device's training CPU.

Both places use the state at once and drop it: the bootstrap draw returns its indices, and the
tree's splitter takes one number from it when it starts. So a state kept per thread and reseeded
with the same integer gives the same numbers: `RandomState.seed(n)` resets exactly what
`RandomState(n)` sets up (the same legacy seeding, and no cached Gaussian). Any other seed (None,
a `RandomState`, a `Generator`, an integer out of range) goes to scikit-learn as before.
`tests/cloud_training/test_fast_paths.py` holds both to the same draws and the same models.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["reseeded_bootstrap", "reseeded_check"]

_SEED_LIMIT = 2**32  # what RandomState accepts as one integer seed


def _plain_seed(seed: object) -> bool:
    return type(seed) is int and 0 <= seed < _SEED_LIMIT


def _scratch() -> Callable[[int], np.random.RandomState]:
    local = threading.local()

    def reseeded(seed: int) -> np.random.RandomState:
        state: np.random.RandomState | None = getattr(local, "state", None)
        if state is None:
            state = local.state = np.random.RandomState(0)
        state.seed(seed)
        return state

    return reseeded


def reseeded_check(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Return `original` (`check_random_state` as the tree module calls it), reseeding a kept state for an integer."""
    reseeded = _scratch()

    def check(seed: Any) -> Any:
        return reseeded(seed) if _plain_seed(seed) else original(seed)

    check.__wrapped__ = original  # type: ignore[attr-defined]
    return check


def reseeded_bootstrap(original: Callable[..., Any]) -> Callable[..., Any]:
    """Return `original` (the forest's bootstrap draw), handed a kept state reseeded with the tree's integer seed."""
    reseeded = _scratch()

    def draw(random_state: Any, *args: Any, **kwargs: Any) -> Any:
        return original(reseeded(random_state) if _plain_seed(random_state) else random_state, *args, **kwargs)

    draw.__wrapped__ = original  # type: ignore[attr-defined]
    return draw
