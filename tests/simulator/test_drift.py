"""Concept drift: after T the chosen devices follow a new relation that training code can rebuild."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest

from edgefleet.physics import FEATURES, make_profile
from simulator.drift import drift_seed, drifted_profile
from simulator.fleet import plan_fleet
from simulator.stream import generate
from tests.simulator.conftest import decode, profile

START = datetime(2026, 11, 1, tzinfo=UTC)
DRIFT_AT_S = 3.0


def test_drifted_profile_is_a_pure_function_of_profile_and_seed():
    base = make_profile("dev-00004", 7)
    first, again = drifted_profile(base, 99), drifted_profile(base, 99)
    assert first == again and first != drifted_profile(base, 100)
    unchanged = ("device_id", "kind", "noise_sd", "phase_rad", "load_period_s", "curvature", "threshold", "jump")
    assert all(getattr(first, name) == getattr(base, name) for name in unchanged)
    assert first.weights != base.weights and first.bias != base.bias


def test_the_plan_names_each_events_seed_time_and_devices():
    fleet = profile(duration_s=10.0, drift=[{"at_fraction": 0.5, "device_fraction": 0.25}])
    (event,) = plan_fleet(fleet).drift
    assert event.at_s == 5.0 and event.drift_seed == drift_seed(3, 0)
    assert len(event.device_ids) == 5 and len(set(event.device_ids)) == 5
    assert plan_fleet(fleet).drift == (event,)  # chosen deterministically
    assert event.to_json_obj()["devices"] == list(event.device_ids)


def test_drift_changes_labels_only_after_t_and_only_for_the_drifted_devices():
    common = {
        "duration_s": 6.0,
        "precision_digits": 17,
        "device_types": [{"name": "u", "count": 20, "rate_per_s": 5.0}],
    }
    drifting = profile(drift=[{"at_s": DRIFT_AT_S, "device_fraction": 0.3}], **common)
    (event,) = plan_fleet(drifting).drift
    before_drift = {(e.device_id, e.seq): decode(e.payload) for e in generate(profile(**common))}
    changed_after = changed_before = 0
    for emission in generate(drifting):
        obj = decode(emission.payload)
        reference = before_drift[(emission.device_id, emission.seq)]
        assert obj["features"] == reference["features"]  # drift leaves the features alone
        after = (datetime.fromisoformat(obj["ts"]) - START).total_seconds() >= DRIFT_AT_S
        if emission.device_id in event.device_ids and after:
            assert obj["label"] != reference["label"]
            changed_after += 1
            # Training code can rebuild the new relation: label - old relation = new relation - old relation.
            x = np.array([[obj["features"][name] for name in FEATURES]])
            base = make_profile(emission.device_id, 3)
            new = drifted_profile(base, event.drift_seed)
            shift = new.label(x)[0] - base.label(x)[0]
            assert obj["label"] - reference["label"] == pytest.approx(shift, abs=1e-9)
        else:
            assert obj["label"] == reference["label"]
            changed_before += emission.device_id in event.device_ids
    assert changed_after > 50 and changed_before > 50


def test_a_relation_kind_override_and_noise_scale_apply_to_the_whole_type():
    fleet = profile(device_types=[{"name": "u", "count": 3, "relation_kind": "threshold", "noise_scale": 0.0}])
    for spec in plan_fleet(fleet).devices:
        expected = dataclasses.replace(make_profile(spec.device_id, 3), kind="threshold")
        assert spec.profile == expected and spec.noise_scale == 0.0
