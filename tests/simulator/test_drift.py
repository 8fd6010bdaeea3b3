"""Drift: after T the chosen devices follow a new relation, or their features move, as the report says."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from simulator.drift import drift_seed, drifted_profile
from simulator.fleet import plan_fleet
from simulator.physics import FEATURES, DeviceProfile, make_profile
from simulator.profile import SimulatorProfile
from simulator.stream import generate
from tests.simulator.conftest import decode, profile

pytestmark = pytest.mark.fast

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


SHIFT = {"temperature_c": 8.0, "humidity_pct": -10.0}
# Full float precision; with noise_scale 0 a label can be checked against the relation exactly.
EXACT = {"duration_s": 6.0, "precision_digits": 17}


def readings(fleet_profile: SimulatorProfile) -> dict[tuple[str, int], tuple[float, dict[str, Any]]]:
    """Return each reading's scheduled offset and decoded message by (device_id, seq)."""
    return {(e.device_id, e.seq): (e.offset_s, decode(e.payload)) for e in generate(fleet_profile)}


def vector(features: dict[str, float]) -> np.ndarray:
    """Return a message's features as one row in FEATURES order."""
    return np.array([[features[name] for name in FEATURES]])


def test_feature_drift_shifts_only_the_chosen_devices_features_from_its_time():
    device_types = [{"name": "u", "count": 20, "rate_per_s": 5.0, "noise_scale": 0.0}]
    event = {"at_s": DRIFT_AT_S, "device_fraction": 0.3, "kind": "features", "feature_shift": SHIFT}
    shifted = profile(drift=[event], device_types=device_types, **EXACT)
    (planned,) = plan_fleet(shifted).drift
    assert planned.kind == "features" and len(planned.device_ids) == 6
    reference = readings(profile(device_types=device_types, **EXACT))
    moved: dict[str, list[float]] = {name: [] for name in FEATURES}
    for key, (offset_s, obj) in readings(shifted).items():
        _, truth = reference[key]
        assert obj["ts"] == truth["ts"]
        if key[0] in planned.device_ids and offset_s >= DRIFT_AT_S:
            for name in FEATURES:
                moved[name].append(obj["features"][name] - truth["features"][name])
            # The relation stays; the label follows it on the shifted features.
            expected = make_profile(key[0], 3).label(vector(obj["features"]))[0]
            assert obj["label"] == pytest.approx(expected, abs=1e-9)
            assert obj["label"] != truth["label"]
        else:
            assert obj == truth  # before its time, and on every other device, nothing moves
    assert len(moved["temperature_c"]) == 6 * 15
    means = {name: float(np.mean(diffs)) for name, diffs in moved.items()}
    assert means == pytest.approx({**dict.fromkeys(FEATURES, 0.0), **SHIFT}, abs=1e-9)


def test_labels_follow_the_relation_in_force_on_the_shift_in_force():
    drift = [
        {"at_s": 2.0, "devices": ["dev-00000"]},
        {"at_s": 3.0, "devices": ["dev-00000", "dev-00001"], "kind": "features", "feature_shift": {"temperature_c": 5}},
        {
            "at_s": 4.0,
            "devices": ["dev-00001"],
            "kind": "features",
            "feature_shift": {"temperature_c": 2, "load_pct": -20},
        },
        {"at_s": 5.0, "devices": ["dev-00001"]},
    ]
    # 50 readings/s: chunks of 64 readings that lie within one stage, and chunks that span two.
    device_types = [{"name": "u", "count": 3, "rate_per_s": 50.0, "noise_scale": 0.0}]
    fleet = profile(drift=drift, device_types=device_types, **EXACT)
    base = {device_id: make_profile(device_id, 3) for device_id in ("dev-00000", "dev-00001", "dev-00002")}
    relation_0 = drifted_profile(base["dev-00000"], drift_seed(3, 0))
    relation_3 = drifted_profile(base["dev-00001"], drift_seed(3, 3))
    no_shift, five, seven = (0.0, 0.0, 0.0, 0.0), (5.0, 0.0, 0.0, 0.0), (7.0, 0.0, 0.0, -20.0)

    def in_force(device_id: str, offset_s: float) -> tuple[DeviceProfile, tuple[float, ...]]:
        if device_id == "dev-00000":
            relation = relation_0 if offset_s >= 2.0 else base[device_id]
            return relation, five if offset_s >= 3.0 else no_shift
        if device_id == "dev-00001":
            shift = seven if offset_s >= 4.0 else five if offset_s >= 3.0 else no_shift
            return relation_3 if offset_s >= 5.0 else base[device_id], shift
        return base[device_id], no_shift

    stages = {spec.device_id: spec.drift for spec in plan_fleet(fleet).devices}
    assert [(s.kind, s.shift) for s in stages["dev-00000"]] == [("relation", no_shift), ("features", five)]
    assert [s.kind for s in stages["dev-00001"]] == ["features", "features", "relation"] and not stages["dev-00002"]
    reference = readings(profile(device_types=device_types, **EXACT))
    for key, (offset_s, obj) in readings(fleet).items():
        relation, shift = in_force(key[0], offset_s)
        x = vector(reference[key][1]["features"]) + np.array(shift)
        assert vector(obj["features"]) == pytest.approx(x, abs=1e-9)
        assert obj["label"] == pytest.approx(relation.label(x)[0], abs=1e-9)


def test_a_shift_of_a_feature_the_device_does_not_measure_moves_only_its_label():
    fan = {"name": "fan", "count": 4, "rate_per_s": 5.0, "features": ["temperature_c", "load_pct"]}
    common = {"device_types": [{**fan, "relation_kind": "linear", "noise_scale": 0.0}], **EXACT}
    event = {"at_s": 0.0, "device_fraction": 1.0, "kind": "features", "feature_shift": {"humidity_pct": 10.0}}
    reference = readings(profile(**common))
    for key, (_, obj) in readings(profile(drift=[event], **common)).items():
        truth = reference[key][1]
        assert obj["features"] == truth["features"] and list(obj["features"]) == ["temperature_c", "load_pct"]
        # A linear relation moves by the same amount wherever the other features are.
        relation = dataclasses.replace(make_profile(key[0], 3), kind="linear")
        anywhere = np.array([[20.0, 50.0, 2.0, 50.0]])
        moved = relation.label(anywhere + np.array([0.0, 10.0, 0.0, 0.0]))[0] - relation.label(anywhere)[0]
        assert obj["label"] - truth["label"] == pytest.approx(moved, abs=1e-9) and abs(moved) > 1e-6


def test_adding_a_features_event_leaves_the_relation_events_devices_and_relations_alone():
    relation = {"at_fraction": 0.5, "device_fraction": 0.25}
    features = {"at_fraction": 0.2, "device_fraction": 0.25, "kind": "features", "feature_shift": SHIFT}
    alone = plan_fleet(profile(duration_s=10.0, drift=[relation]))
    both = plan_fleet(profile(duration_s=10.0, drift=[relation, features]))
    assert both.drift[0] == alone.drift[0] and both.drift[0].drift_seed == drift_seed(3, 0)
    assert both.drift[1].drift_seed == drift_seed(3, 1) and both.drift[1].device_ids != alone.drift[0].device_ids
    for before, after in zip(alone.devices, both.devices, strict=True):
        assert [stage.profile for stage in before.drift if stage.kind == "relation"] == [
            stage.profile for stage in after.drift if stage.kind == "relation"
        ]
        if before.device_id not in both.drift[1].device_ids:
            assert after == before


def test_the_plan_reports_each_events_kind_and_a_features_events_shift():
    drift = [
        {"at_s": 1.0, "devices": ["dev-00002"]},
        {
            "at_s": 1.5,
            "devices": ["dev-00001"],
            "kind": "features",
            "feature_shift": {"load_pct": 4, "temperature_c": 8},
        },
    ]
    relation, features = plan_fleet(profile(drift=drift)).drift
    assert relation.to_json_obj() == {
        "index": 0,
        "kind": "relation",
        "at_s": 1.0,
        "drift_seed": drift_seed(3, 0),
        "devices": ["dev-00002"],
    }
    assert features.to_json_obj() == {
        "index": 1,
        "kind": "features",
        "at_s": 1.5,
        "drift_seed": drift_seed(3, 1),
        "feature_shift": {"temperature_c": 8.0, "load_pct": 4.0},
        "devices": ["dev-00001"],
    }
