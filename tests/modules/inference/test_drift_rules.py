"""Drift monitor rules on hand-made readings: thresholds, references, memory, messages, refusals.

The statistical behaviour on a simulated fleet is in test_drift.py (slow: it simulates 150
devices for two weeks); these need no simulation and run in the fast tier.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edgefleet.alerts import ALERT_SCHEMA, DriftAlert
from edgefleet.feature_reference import FeatureReference, psi, reference_from_values
from modules.inference.drift import DriftMonitor, DriftSettings
from simulator.physics import FEATURES

pytestmark = pytest.mark.fast

START = datetime(2026, 11, 1, tzinfo=UTC)


def test_nan_feature_values_are_skipped() -> None:
    reference = reference_from_values(np.linspace(0.0, 1.0, 100))
    settings = DriftSettings(
        window_readings=10, min_readings=5, feature_window_readings=10, min_feature_readings=5, feature_interval_s=0
    )
    monitor = DriftMonitor(settings, {"d": {"a": reference}}, {}, ["a"])
    values = [float("nan") if i % 2 else 0.05 * i for i in range(20)]
    for value in values:
        monitor.observe("d", [value], 0.0, None, START)
    # The window holds the last 10 readings: 5 numbers are judged, the NaNs take slots but no bin.
    last_numbers = np.array(values[-10:])
    status = monitor.status("d")
    assert status.worst_psi == pytest.approx(psi(reference, reference.bin_counts(last_numbers)))


def test_memory_per_device_is_bounded() -> None:
    rng = np.random.default_rng(0)
    references = {name: reference_from_values(rng.normal(size=1_000)) for name in FEATURES}
    device_ids = [f"dev-{i:05d}" for i in range(10_000)]
    monitor = DriftMonitor(
        DriftSettings(),
        references={device_id: references for device_id in device_ids},
        holdout_mse=dict.fromkeys(device_ids, 1.0),
        features=FEATURES,
    )
    assert monitor.buffer_nbytes() == 0  # nothing is allocated before a device's first reading
    for device_id in device_ids:
        monitor.observe(device_id, [0.0, 0.0, 0.0, 0.0], 1.0, 1.0, START)
    per_device = monitor.buffer_nbytes() / len(device_ids)
    # 200 float32 squared residuals + 4 x 400 int8 bins = 2,400 B of ring buffers, plus bin counts
    # and the device's reference shares (4 x 10 bins) = 3,216 B in all.
    assert per_device <= 3_300
    assert monitor.buffer_nbytes() <= 33_000_000
    # Further readings allocate nothing more.
    monitor.observe(device_ids[0], [1.0, 1.0, 1.0, 1.0], 1.0, 2.0, START + timedelta(seconds=1))
    assert monitor.buffer_nbytes() / len(device_ids) == per_device


def test_uneven_shares_are_kept_in_the_text() -> None:
    reference = reference_from_values(np.r_[np.zeros(60), np.linspace(1.0, 2.0, 40)])  # a point mass at 0
    text = reference.to_text()
    assert " | " in text
    assert FeatureReference.from_text(text) == reference


def test_constant_training_data_gets_a_bin_of_its_own() -> None:
    reference = reference_from_values(np.full(100, 3.7))
    assert reference.edges[0] <= 3.7 < reference.edges[1]
    assert reference.proportions[1] == 1.0
    assert FeatureReference.from_text(reference.to_text()) == reference
    assert psi(reference, reference.bin_counts(np.full(50, 3.7))) == pytest.approx(0.0)
    assert psi(reference, reference.bin_counts(np.full(50, 5.0))) > 10.0


def test_nans_are_ignored_in_the_training_values() -> None:
    values = np.r_[np.linspace(0.0, 1.0, 100), np.full(100, np.nan)]
    assert reference_from_values(values) == reference_from_values(np.linspace(0.0, 1.0, 100))


def test_a_drift_alert_message_extends_the_existing_alert_shape() -> None:
    alert = DriftAlert("dev-00001", "feature", 0.4123456789, 0.25, "load_pct", 200, "2026-11-01T00:00:00Z")
    message = alert.to_json_obj(edge_device="edge1")
    assert {"schema", "kind", "detail", "edge_device", "module", "ts"} <= message.keys()
    assert message["schema"] == ALERT_SCHEMA and message["kind"] == "drift" and message["module"] == "inference"
    assert message["device_id"] == "dev-00001" and message["ts"] == "2026-11-01T00:00:00Z"
    assert message["drift"] == {
        "kind": "feature",
        "metric": "psi",
        "feature": "load_pct",
        "value": 0.412346,
        "threshold": 0.25,
        "window_readings": 200,
    }
    assert "load_pct" in message["detail"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_readings": 500}, "min_readings=500 exceeds window_readings=200"),
        ({"rearm_fraction": 1.2}, "rearm_fraction=1.2: must lie strictly between 0 and 1"),
        ({"residual_ratio_threshold": 0.5}, "must exceed 1"),
        ({"psi_threshold": float("nan")}, "psi_threshold=nan: must be a positive finite number"),
        ({"window_readings": 5}, "window_readings=5: choose between 10 and 100000"),
        ({"feature_interval_s": -1.0}, "feature_interval_s=-1.0: must be a finite number of seconds >= 0"),
    ],
)
def test_settings_say_how_to_fix_a_bad_value(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DriftSettings(**changes)  # type: ignore[arg-type]


def test_too_few_training_values_say_how_many_are_needed() -> None:
    with pytest.raises(ValueError, match=r"30 finite values for a 10-bin reference; need at least 50 .*use bins=6"):
        reference_from_values(np.r_[np.arange(30.0), np.full(10, np.nan)])


def test_a_zero_holdout_mse_is_refused_with_a_way_out() -> None:
    with pytest.raises(ValueError, match=r"holdout_mse\['dev-1'\]=0.0: must be a positive finite number; leave"):
        DriftMonitor(DriftSettings(), {}, {"dev-1": 0.0}, FEATURES)


def test_a_broken_stored_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        FeatureReference.from_text("2 1 | 0.3 0.3 0.4")
    with pytest.raises(ValueError, match="needs 3 proportions"):
        FeatureReference.from_text("1 2 | 0.5 0.5")
    with pytest.raises(ValueError, match="holds something other than numbers"):
        FeatureReference.from_text("1 two 3")
    with pytest.raises(ValueError, match="a feature reference is a string like"):
        FeatureReference.from_text({"edges": [1.0]})


def test_a_reading_with_the_wrong_number_of_features_is_refused() -> None:
    monitor = DriftMonitor(DriftSettings(), {}, {}, FEATURES)
    with pytest.raises(ValueError, match="3 feature values for 4 features"):
        monitor.observe("dev-1", [1.0, 2.0, 3.0], 0.0, None, START)


def test_a_reading_without_a_feature_does_not_blind_that_feature_for_a_day() -> None:
    rng = np.random.default_rng(5)
    reference = reference_from_values(rng.random(2_000))
    settings = DriftSettings(feature_interval_s=0)
    values = np.r_[rng.random(500), rng.random(500) + 0.5].tolist()  # the sensor moves at reading 500

    def first_alert(gap_at: int | None) -> int | None:
        monitor = DriftMonitor(settings, {"d": {"a": reference}}, {}, ["a"])
        for i, value in enumerate(values):
            reading = float("nan") if i == gap_at else value  # NaN: the reading lacked this feature
            if monitor.observe("d", [reading], 0.0, None, START):
                return i
        return None

    without_gap = first_alert(None)
    assert without_gap is not None and 500 <= without_gap < 700  # measured: 624
    # One reading lacked the feature just before the move: the alert comes about as soon as without
    # it (requiring a value in every slot delayed it to reading 899, when the gap left the window).
    with_gap = first_alert(499)
    assert with_gap is not None and abs(with_gap - without_gap) <= 5
