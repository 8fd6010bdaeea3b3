"""Concept drift: a device's hidden label relation changes, reproducibly from a seed.

Training code and tests rebuild a drifted relation with `drifted_profile(make_profile(id, seed),
drift_seed(seed, event_index))`; the simulator report lists each event's seed and devices.
Feature drift (`kind: features`) needs no seed to rebuild: the report lists its `feature_shift`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from simulator.physics import DeviceProfile, device_seed

__all__ = ["drift_seed", "drifted_profile"]

# Same spread as simulator.physics.make_profile: a drifted device looks like another healthy device.
_WEIGHT_SD = 2.5
_BIAS_RANGE = (5.0, 25.0)


def drift_seed(seed: int, event_index: int) -> int:
    """Return the seed of drift event `event_index` of a fleet with seed `seed`."""
    return device_seed(seed, f"drift-{event_index}")


def drifted_profile(profile: DeviceProfile, drift_seed: int) -> DeviceProfile:
    """Return `profile` with new weights and bias drawn from (`drift_seed`, device id); a pure function."""
    rng = np.random.default_rng(device_seed(drift_seed, profile.device_id))
    weights = rng.normal(0.0, _WEIGHT_SD, 4)
    return dataclasses.replace(
        profile,
        weights=(float(weights[0]), float(weights[1]), float(weights[2]), float(weights[3])),
        bias=float(rng.uniform(*_BIAS_RANGE)),
    )
