import numpy as np
import pytest

from simulator.physics import FEATURES, make_profile

pytestmark = pytest.mark.fast


def test_same_seed_and_device_give_the_same_hidden_relation():
    assert make_profile("dev-1", 5) == make_profile("dev-1", 5)
    assert make_profile("dev-1", 5) != make_profile("dev-1", 6)


def test_devices_follow_different_relations_on_the_same_inputs():
    x = make_profile("dev-a", 0).features(np.arange(100) * 300.0, np.random.default_rng(0))
    labels = [make_profile(f"dev-{i}", 0).label(x) for i in range(5)]
    gaps = [np.abs(labels[0] - other).mean() for other in labels[1:]]
    assert min(gaps) > 1.0  # well above the devices' noise level
    assert x.shape == (100, len(FEATURES))
