"""The trees' kept random states draw what scikit-learn's new ones would, and anything else is scikit-learn's."""

import re
import threading

import numpy as np
import pytest

from cloud_training.fast_paths import original_of
from cloud_training.random_states import reseeded_bootstrap, reseeded_check

pytestmark = pytest.mark.fast


def scikit_learns_check():
    return original_of("sklearn.tree._classes", "check_random_state")


def scikit_learns_bootstrap():
    return original_of("sklearn.ensemble._forest", "_generate_sample_indices")


def answer(check, seed):
    """Return what a state from `check(seed)` draws, which state it is, or the error it raises."""
    try:
        state = check(seed)
    except Exception as err:  # the answer compared is the error itself, less the object's address
        return ("raises", type(err), re.sub(r" at 0x[0-9A-Fa-f]+", "", str(err)))
    if state is np.random.mtrand._rand:
        return ("numpy's global state",)
    return ("draws", state.randint(0, 2**31 - 1, 6).tolist(), state.standard_normal(3).tolist(), state.random_sample())


SEEDS = {
    "zero": lambda: 0,
    "a tree's seed": lambda: 1_608_637_542,
    "the largest seed": lambda: 2**32 - 1,
    "one past the largest": lambda: 2**32,
    "negative": lambda: -1,
    "a numpy integer": lambda: np.int64(7),
    "a bool": lambda: True,
    "None": lambda: None,
    "a RandomState": lambda: np.random.RandomState(4),
    "a Generator": lambda: np.random.default_rng(4),
    "a string": lambda: "7",
}


@pytest.mark.parametrize("case", sorted(SEEDS))
def test_the_kept_state_answers_as_scikit_learns_check_does(case):
    original = scikit_learns_check()

    assert answer(reseeded_check(original), SEEDS[case]()) == answer(original, SEEDS[case]())


def test_a_kept_state_forgets_its_cached_gaussian_when_reseeded():
    check = reseeded_check(scikit_learns_check())
    check(3).standard_normal()  # leaves the second of a pair of Gaussians cached

    assert answer(check, 3) == answer(np.random.RandomState, 3)


def test_each_thread_keeps_its_own_state():
    check = reseeded_check(scikit_learns_check())
    states = []
    thread = threading.Thread(target=lambda: states.append(check(1)))
    thread.start()
    thread.join()

    assert check(1) is not states[0]


DRAWS = {
    "a tree's seed": (1_608_637_542, 500, 500, None),
    "fewer drawn than rows": (12, 500, 350, None),
    "weighted rows": (12, 6, 6, np.array([1.0, 0.0, 2.0, 1.0, 1.0, 3.0])),
    "a RandomState": (np.random.RandomState(9), 40, 40, None),
    "out of range": (-3, 40, 40, None),
}


@pytest.mark.parametrize("case", sorted(DRAWS))
def test_the_bootstrap_draw_picks_the_rows_scikit_learns_picks(case):
    original = scikit_learns_bootstrap()
    seed, n_samples, n_bootstrap, weights = DRAWS[case]
    fresh_seed = seed if not isinstance(seed, np.random.RandomState) else np.random.RandomState(9)

    def rows(draw, random_state):
        try:
            return draw(random_state, n_samples, n_bootstrap, weights).tolist()
        except Exception as err:  # the answer compared is the error itself
            return ("raises", type(err), str(err))

    assert rows(reseeded_bootstrap(original), seed) == rows(original, fresh_seed)
