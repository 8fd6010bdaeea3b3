"""Routing readings to models and packing predictions (real bundle, no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from edgefleet.bundle import read_manifest
from edgefleet.desired import InferenceDesired
from edgefleet.messages import Reading, encode_json, pack_batches, units_4kb
from modules.inference.predictor import Predictor
from modules.runtime import LatencyWindow, apply_desired_patch

pytestmark = pytest.mark.fast


def _reading(device: str, features=None) -> Reading:
    features = features or {"temperature_c": 21.0, "humidity_pct": 40.0, "vibration_mm_s": 1.5, "load_pct": 55.0}
    return Reading(device, 1, datetime(2026, 11, 21, tzinfo=UTC), tuple(features.items()))


def test_poor_model_threshold_sends_devices_worse_than_it_to_the_fleet_model(small_bundle):
    manifest = read_manifest(small_bundle)
    device = next(d for d, e in manifest.devices.items() if e.status == "trained")
    predictor = Predictor(small_bundle, cache_mb=8, mode="bundle", poor_model_threshold=1.0)
    assert predictor.route(device).kind == "device"
    predictor.set_poor_model_threshold(0.0)
    route = predictor.route(device)
    assert (route.kind, route.fallback_reason) == ("fleet", "poor_model")


def test_device_model_is_only_served_from_the_cache_once_loaded(small_bundle):
    manifest = read_manifest(small_bundle)
    device = next(d for d, e in manifest.devices.items() if e.status == "trained")
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
