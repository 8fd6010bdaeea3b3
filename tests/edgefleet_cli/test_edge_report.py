"""Edge run summaries from a lake: accounting, live accuracy against ground truth, the HTML report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from edgefleet.bundle import BundleReader, Route, read_manifest
from edgefleet_cli.edge_report import (
    account,
    cpu_per_1000_readings,
    live_accuracy,
    plots,
    units_per_1000_predictions,
    upstream_cost,
    write_html,
)

pytestmark = pytest.mark.fast


def _lake(small_bundle, n: int = 40) -> pd.DataFrame:
    manifest = read_manifest(small_bundle)
    device = next(d for d, e in manifest.devices.items() if e.kind == "device")
    reader = BundleReader(small_bundle)
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.normal(20, 3, n), rng.normal(50, 5, n), rng.gamma(2, 1, n), rng.uniform(0, 100, n)])
    own = reader.model(Route("device", device, None)).predict(x)
    start = datetime(2026, 11, 21, tzinfo=UTC)
    rows = pd.DataFrame(x, columns=list(reader.features))
    rows["device_id"] = device
    rows["seq"] = np.arange(n)
    rows["ts"] = [start + timedelta(seconds=i) for i in range(n)]
    rows["label"] = own + 0.5  # truth the device model misses by exactly 0.5
    rows["prediction_value"] = own
    rows["prediction_model"] = "device"
    rows["edge_latency_ms"] = 5.0
    rows["source_module"] = "inference"
    return rows


def test_live_accuracy_scores_device_models_and_the_fleet_model_on_the_same_readings(small_bundle):
    summary = live_accuracy(_lake(small_bundle), small_bundle)
    assert summary["by_model"]["device"]["mae"] == 0.5
    like = summary["device_vs_fleet"]
    assert like["device_model"]["n"] == like["fleet_model"]["n"] == 40
    assert like["fleet_model"]["mse"] != like["device_model"]["mse"]


def test_account_counts_predicted_duplicates_dead_letters_and_lost():
    lake = pd.DataFrame({"device_id": ["a", "a", "a", "b"], "seq": [1, 1, 2, 1], "source_module": ["inference"] * 4})
    result = account(lake, [{"reason": "non_finite"}, {"reason": "non_finite"}], {"sent": 7, "expected_valid": 5})
    assert result == {
        "predicted": 3,
        "predicted_duplicates": 1,
        "deadletters": 2,
        "deadletters_by_reason": {"non_finite": 2},
        "sent": 7,
        "expected_valid": 5,
        "lost": 2,
    }


def test_units_per_thousand_predictions_comes_from_the_inference_counters():
    stats = {"predictions": 2000, "outbox": {"units_4kb": {"predictions": 230, "deadletter": 9}}}
    assert units_per_1000_predictions(stats) == 115.0
    assert units_per_1000_predictions({}) is None


def test_upstream_cost_counts_every_output_but_the_sensor_telemetry_inference_consumes():
    sensor = {
        "outbox": {
            "units_4kb": {"telemetry": 900, "deadletter": 3},
            "bytes": {"telemetry": 3_600_000, "deadletter": 900},
        }
    }
    inference = {
        "outbox": {
            "units_4kb": {"predictions": 20, "deadletter": 2, "alerts": 1},
            "bytes": {"predictions": 70_000, "deadletter": 600, "alerts": 500},
        }
    }
    assert upstream_cost(sensor, inference, 2000) == {"units_4kb_per_1000_readings": 13.0, "bytes_per_reading": 36.0}
    assert upstream_cost(sensor, inference, 0) == {"units_4kb_per_1000_readings": None, "bytes_per_reading": None}


def test_html_report_embeds_the_summary_and_plots(small_bundle, tmp_path):
    lake = _lake(small_bundle)
    images = plots(lake, {"drift": datetime(2026, 11, 21, 0, 0, 20, tzinfo=UTC)})
    assert set(images) == {"error_over_time", "prediction_vs_truth", "latency"}
    page = write_html(tmp_path / "r.html", "demo", {"summary": {"lost": 0, "mse": 0.25}}, images).read_text()
    assert "<th>lost</th><td>0</td>" in page and page.count("data:image/png;base64,") == 3


def test_drift_detection_counts_flagged_drifted_devices_and_false_alarms(tmp_path):
    import json

    from edgefleet.lake import read_drift_alerts
    from edgefleet_cli.edge_report import drift_detection

    events = tmp_path / "_events"
    events.mkdir()
    bodies = [
        {"schema": "edgefleet.alert/1", "kind": "drift", "device_id": "d1"},
        {"schema": "edgefleet.alert/1", "kind": "drift", "device_id": "d1"},  # again after recovering
        {"schema": "edgefleet.alert/1", "kind": "drift", "device_id": "s7"},
        {"schema": "edgefleet.alert/1", "kind": "bundle_version_mismatch"},
    ]
    (events / "2026-11-21.jsonl").write_text("".join(json.dumps({"body": b}) + "\n" for b in bodies))

    result = drift_detection(read_drift_alerts(tmp_path), ["d1", "d2"], {f"s{i}" for i in range(10)} | {"d1", "d2"})

    assert (result["alerts"], result["detected"], result["drifted"]) == (3, 1, 2)
    assert result["detection_rate"] == 0.5
    assert (result["false_alarms"], result["false_alarm_rate"]) == (1, 0.1)
    assert result["false_alarm_devices"] == ["s7"]


def test_cpu_per_1000_readings_is_each_roles_milliseconds_and_their_total_and_none_without_readings():
    used = {"sensor": 1.2, "inference": 0.6, "brokers": 0.3}
    assert cpu_per_1000_readings(used, 20_000) == {"sensor": 60.0, "inference": 30.0, "brokers": 15.0, "total": 105.0}
    assert cpu_per_1000_readings(used, 0)["total"] is None
