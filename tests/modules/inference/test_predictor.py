"""Routing readings to models and packing predictions (real bundle, no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from edgefleet.bundle import Route, read_manifest
from edgefleet.desired import InferenceDesired
from edgefleet.messages import Reading, encode_json, pack_batches, units_4kb
from modules.inference.predictor import FLEET_ROUTE, Choice, Predictor
from modules.runtime import LatencyWindow, apply_desired_patch
from tests.edgefleet.test_bundle_correction import CORRECTION, corrected_devices, rewrite_devices

pytestmark = pytest.mark.fast

FLEET_CORRECTED = {"kind": "fleet_corrected", "correction": CORRECTION}


def _reading(device: str, features=None) -> Reading:
    features = features or {"temperature_c": 21.0, "humidity_pct": 40.0, "vibration_mm_s": 1.5, "load_pct": 55.0}
    return Reading(device, 1, datetime(2026, 11, 21, tzinfo=UTC), tuple(features.items()))


def test_poor_model_threshold_sends_devices_worse_than_it_to_the_fleet_model(small_bundle):
    manifest = read_manifest(small_bundle)
    device = next(d for d, e in manifest.devices.items() if e.kind == "device")
    predictor = Predictor(small_bundle, cache_mb=8, mode="bundle", poor_model_threshold=1.0)
    assert predictor.route(device).kind == "device"
    predictor.set_poor_model_threshold(0.0)
    route = predictor.route(device)
    assert (route.kind, route.fallback_reason) == ("fleet", "poor_model")


def test_device_model_is_only_served_from_the_cache_once_loaded(small_bundle):
    manifest = read_manifest(small_bundle)
    device = next(d for d, e in manifest.devices.items() if e.kind == "device")
    predictor = Predictor(small_bundle, cache_mb=8, mode="bundle", poor_model_threshold=1.0)
    choice, row = predictor.choose(_reading(device))
    assert predictor.ready_model(choice.route) is None
    assert predictor.load(device) is None
    model = predictor.ready_model(choice.route)
    values = predictor.predict(model, choice, [row])
    assert len(values) == 1 and len(repr(values[0])) <= 16  # float32 precision, not 17 digits


def test_reading_missing_a_feature_goes_to_the_fleet_model_on_filled_values(small_bundle):
    predictor = Predictor(small_bundle, cache_mb=8, mode="bundle", poor_model_threshold=1.0)
    choice, row = predictor.choose(_reading("anyone", {"temperature_c": 20.0}))
    assert choice.route.fallback_reason == "missing_features"
    value = predictor.predict(predictor.ready_model(choice.route), choice, [row])[0]
    assert value == value  # finite: the gaps were filled with the fleet means


def test_prediction_batches_fill_messages_up_to_the_limit_so_4kb_units_are_not_wasted():
    items = [encode_json({"schema": "edgefleet.telemetry/1", "n": i, "pad": "x" * 300}) for i in range(500)]
    batches = pack_batches(items, 64 * 1024)
    assert all(len(batch) <= 64 * 1024 for batch in batches)
    assert sum(len(json.loads(batch)["readings"]) for batch in batches) == 500
    total_units = sum(units_4kb(len(batch)) for batch in batches)
    assert total_units <= sum(len(item) for item in items) / 4096 + len(batches)


def test_inference_desired_refuses_an_unexpanded_bundle_version_placeholder():
    try:
        apply_desired_patch(InferenceDesired(), {"expectedBundleVersion": "${BUNDLE_VERSION}"})
    except ValueError as err:
        assert "placeholder" in str(err)
    else:
        raise AssertionError("placeholder accepted")


def test_latency_window_reports_p50_and_p99_over_the_latest_values():
    window = LatencyWindow(capacity=100)
    assert window.percentiles() == {"p50_ms": None, "p99_ms": None}
    window.add_many([1000.0] * 100)
    window.add_many(list(range(100)))  # overwrites the old values entirely
    stats = window.percentiles()
    assert 49 <= stats["p50_ms"] <= 50 and stats["p99_ms"] < 100


def test_a_fleet_corrected_device_keeps_its_kind_under_any_poor_model_threshold_and_needs_no_load(
    small_bundle, tmp_path
):
    device, _ = corrected_devices(read_manifest(small_bundle))
    bundle = rewrite_devices(small_bundle, tmp_path / "b", {device: FLEET_CORRECTED})
    predictor = Predictor(bundle, cache_mb=8, mode="bundle", poor_model_threshold=0.0)
    choice, row = predictor.choose(_reading(device))
    assert choice.route == Route("fleet_corrected", device, None)
    model = predictor.ready_model(choice.route)  # the fleet model is held from the start: nothing to load
    assert model is predictor.ready_model(choice.route)
    rows = [row, [v + 1.0 for v in row]]
    fleet = predictor.predict(predictor.ready_model(FLEET_ROUTE), Choice(FLEET_ROUTE), rows)
    values = predictor.predict(model, choice, rows)
    expected = np.array(fleet) + CORRECTION.intercept + np.array(rows) @ np.array(CORRECTION.coef)
    np.testing.assert_allclose(values, expected, rtol=1e-6)  # both rounded to float32 precision


def test_a_fleet_corrected_reading_missing_a_feature_goes_to_the_fleet_model_on_filled_values(small_bundle, tmp_path):
    device, _ = corrected_devices(read_manifest(small_bundle))
    bundle = rewrite_devices(small_bundle, tmp_path / "b", {device: FLEET_CORRECTED})
    predictor = Predictor(bundle, cache_mb=8, mode="bundle", poor_model_threshold=1.0)
    choice, _ = predictor.choose(_reading(device, {"temperature_c": 20.0}))
    assert (choice.route.kind, choice.route.fallback_reason, choice.fill) == ("fleet", "missing_features", True)
