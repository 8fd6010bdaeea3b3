"""Real processes: a reading its model cannot answer costs only itself, never the readings around it."""

from __future__ import annotations

import json

from edgefleet.bundle import read_manifest
from tests.edge_fixtures import deadletters, lake_rows, reading, wait_for

NORMAL_READINGS = 200
RATE_PER_S = 400.0
SENTINEL = 1e39  # a sensor's FLT_MAX sentinel: inf once the float32 ONNX model reads it


def test_a_sentinel_reading_among_two_hundred_costs_no_other_reading(start_edge, publisher_factory, small_bundle):
    manifest = read_manifest(small_bundle)
    trained = sorted(d for d, e in manifest.devices.items() if e.kind == "device")
    linear = next(d for d in trained if manifest.devices[d].family == "ridge")
    devices = [*trained, "never-seen-device"]
    normal = [reading(devices[i % len(devices)], i // len(devices)) for i in range(NORMAL_READINGS)]
    features = {"temperature_c": SENTINEL, "humidity_pct": 40.0, "vibration_mm_s": 1.5, "load_pct": 55.0}
    bad = reading(linear, 10_000, features=features)
    edge = start_edge()
    publisher = publisher_factory(edge)
    # In the middle of the stream, so the rounds around it carry other devices' readings too.
    publisher.publish_all([*normal[:100], bad, *normal[100:]], rate_per_s=RATE_PER_S)
    publisher.wait_acked()

    expected = {(item["device_id"], item["seq"]) for item in normal}

    def predicted():
        rows = lake_rows(edge)
        rows = rows[rows["source_module"] == "inference"]
        seen = set(zip(rows["device_id"], rows["seq"].astype(int), strict=True))
        return (rows,) if expected <= seen else None

    (rows,) = wait_for(predicted, timeout_s=60, interval_s=0.5)

    def bad_one_answered():
        lake = lake_rows(edge)
        rows_now = lake[(lake["source_module"] == "inference") & (lake["seq"] == bad["seq"])]
        dead = [
            record
            for record in deadletters(edge)
            if f'"seq":{bad["seq"]}' in record.get("payload", "").replace(" ", "")
        ]
        return (rows_now, dead) if len(rows_now) or dead else None

    served, dead = wait_for(bad_one_answered)
    if len(served):
        [row] = served.to_dict("records")
        assert (row["prediction_model"], row["prediction_fallback_reason"]) == ("fleet", "model_error")
    else:
        assert dead[0]["reason"], dead[0]
    assert len(rows[rows["seq"] != bad["seq"]]) == NORMAL_READINGS  # each normal reading once
    _status, stats = edge.method("inference", "stats")
    assert "Traceback" not in edge.processes["inference"].log_tail(20000)
    assert stats.get("internal_errors", 0) == 0
    assert json.dumps(stats)  # the counters stay JSON (no inf leaked into them)
