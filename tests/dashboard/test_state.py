"""FleetState: what the dashboard shows for a stream of upstream messages, and that it stays bounded."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from dashboard.state import FleetState
from edgefleet.envelope import compress_body
from edgefleet.routes import Message

pytestmark = pytest.mark.fast

JSON = {"contentType": "application/json", "contentEncoding": "utf-8"}


class Clock:
    def __init__(self, now_s: float = 1_800_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def prediction(
    device: str,
    seq: int,
    *,
    value: float = 1.0,
    label: float | None = 1.5,
    model: str = "device",
    reason: str | None = None,
    latency_ms: float = 4.0,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "schema": "edgefleet.telemetry/1",
        "device_id": device,
        "seq": seq,
        "ts": f"2026-11-20T10:00:{seq % 60:02d}Z",
        "features": {"temp": 20.0 + seq, "vib": 0.5},
        "prediction": {"value": value, "model": model, "model_version": "3", "fallback_reason": reason},
        "edge": {"edge_device": "edge1", "received_ts": "2026-11-20T10:00:00Z", "latency_ms": latency_ms},
    }
    if label is not None:
        item["label"] = label
    return item


def batch(items: list[dict[str, Any]], module: str = "inference", output: str = "predictions") -> Message:
    body = json.dumps({"schema": "edgefleet.batch/1", "readings": items}).encode()
    return Message("edge1", module, output, {}, JSON, body)


def message(obj: object, output: str = "alerts") -> Message:
    return Message("edge1", "inference", output, {}, JSON, json.dumps(obj).encode())


def status_of(state: FleetState, device: str) -> str:
    view = state.device_view(device)
    assert view is not None
    return str(view["status"])


def test_a_device_served_by_its_own_model_shows_its_points_and_residual() -> None:
    state = FleetState(clock=Clock())
    state.ingest(batch([prediction("dev-1", seq, value=1.0, label=2.0) for seq in range(5)]))
    view = state.device_view("dev-1")
    assert view is not None
    assert view["status"] == "device_model"
    assert view["predictions"] == 5
    assert view["points"]["predicted"] == [1.0] * 5
    assert view["points"]["residual"] == [1.0] * 5
    assert view["mse"] == pytest.approx(1.0)
    assert view["features"] == {"name": ["temp", "vib"], "value": [24.0, 0.5]}


def test_a_device_served_by_the_fleet_model_shows_as_fallback_with_its_reason() -> None:
    state = FleetState(clock=Clock())
    state.ingest(batch([prediction("dev-2", 1, model="fleet", reason="no_model")]))
    assert status_of(state, "dev-2") == "fallback"
    table = state.device_table("fallbacks", descending=True)
    assert table["device_id"] == ["dev-2"] and table["fallbacks"] == [1]
    overview = state.overview()
    assert overview.fallbacks_by_reason == {"reason": ["no_model"], "count": [1]}
    assert overview.by_status["fallback"] == 1


def test_fleet_corrected_predictions_are_counted_and_their_device_shows_as_fleet_corrected() -> None:
    state = FleetState(clock=Clock())
    state.ingest(batch([prediction("dev-4", seq, model="fleet_corrected") for seq in range(3)]))
    state.ingest(batch([prediction("dev-5", 1, model="fleet", reason="no_model")]))
    assert status_of(state, "dev-4") == "fleet_corrected"
    overview = state.overview()
    assert overview.totals["fleet_corrected"] == 3 and overview.totals["predictions"] == 4
    assert overview.totals["fallbacks"] == 1 and overview.totals["malformed"] == 0
    assert overview.by_status["fleet_corrected"] == 1 and overview.by_status["fallback"] == 1


def test_a_device_with_no_reading_for_a_minute_shows_as_silent() -> None:
    clock = Clock()
    state = FleetState(clock=clock)
    state.ingest(batch([prediction("dev-3", 1)]))
    clock.now_s += 59
    assert status_of(state, "dev-3") == "device_model"
    clock.now_s += 2
    assert status_of(state, "dev-3") == "silent"
    assert state.overview().by_status["silent"] == 1


def test_a_drift_alert_marks_its_device_as_drifting() -> None:
    state = FleetState(clock=Clock())
    state.ingest(batch([prediction("dev-4", 1)]))
    alert = {
        "schema": "edgefleet.alert/1",
        "kind": "drift",
        "device_id": "dev-4",
        "drift": {"kind": "residual", "metric": "mse_ratio", "value": 3.2, "threshold": 2.0, "window_readings": 200},
    }
    state.ingest(message(alert))
    assert status_of(state, "dev-4") == "drifting"
    assert state.overview().drift_alerts[0]["value"] == 3.2


def test_dead_letters_are_counted_by_reason_and_attributed_to_known_devices() -> None:
    state = FleetState(clock=Clock())
    state.ingest(batch([prediction("dev-5", 1)]))
    payload = json.dumps({"device_id": "dev-5", "seq": "x"})
    letter = {
        "schema": "edgefleet.deadletter/1",
        "reason": "wrong_type",
        "detail": "d",
        "source": "s",
        "payload": payload,
    }
    state.ingest(message(letter, "deadletter"))
    state.ingest(message({**letter, "payload": "junk"}, "deadletter"))
    assert state.overview().deadletters_by_reason == {"reason": ["wrong_type"], "count": [2]}
    assert state.device_table()["deadletters"] == [1]


def test_raw_readings_count_as_readings_and_throughput_is_per_second() -> None:
    clock = Clock()
    state = FleetState(clock=clock)
    raw = {key: value for key, value in prediction("dev-6", 1).items() if key not in ("prediction", "edge")}
    state.ingest(batch([raw, raw], module="sensor", output="telemetry"))
    state.ingest(batch([prediction("dev-6", 1)]))
    clock.now_s += 1
    overview = state.overview()
    assert overview.totals["readings"] == 2 and overview.totals["predictions"] == 1
    assert overview.throughput["readings_per_s"] == [2.0]
    assert overview.throughput["predictions_per_s"] == [1.0]
    assert overview.latency_p50_ms == pytest.approx(4.0)


def test_latency_percentiles_cover_the_latest_window() -> None:
    state = FleetState(clock=Clock(), latency_window_readings=100)
    state.ingest(batch([prediction("dev-7", seq, latency_ms=1000.0) for seq in range(100)]))
    state.ingest(batch([prediction("dev-7", seq, latency_ms=float(seq)) for seq in range(100)]))
    overview = state.overview()
    assert overview.latency_p50_ms == pytest.approx(49.5)
    assert overview.latency_p99_ms == pytest.approx(98.01)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'{"schema": "edgefleet.batch/1", "readings": 3}',
        b'{"schema": "edgefleet.batch/1", "readings": [{"device_id": 1}]}',
        b'{"schema": "something/else"}',
        b'{"schema": "edgefleet.alert/1", "kind": "drift", "device_id": 5}',
        json.dumps({"schema": "edgefleet.batch/1", "readings": [{**prediction("d", 1), "prediction": 7}]}).encode(),
    ],
)
def test_a_malformed_message_is_counted_not_raised(body: bytes) -> None:
    state = FleetState(clock=Clock())
    state.ingest(Message("edge1", "inference", "predictions", {}, JSON, body))
    assert state.overview().totals["malformed"] == 1


def test_a_compressed_prediction_batch_shows_as_the_plain_one_would() -> None:
    items = [prediction("dev-3", seq, value=1.0, label=2.0) for seq in range(5)]
    body, encoding = compress_body(json.dumps({"schema": "edgefleet.batch/1", "readings": items}).encode())
    compressed = Message("edge1", "inference", "predictions", {}, {**JSON, "contentEncoding": encoding}, body)
    plain, opened = FleetState(clock=Clock()), FleetState(clock=Clock())

    plain.ingest(batch(items))
    opened.ingest(compressed)

    assert encoding == "gzip"
    assert opened.device_view("dev-3") == plain.device_view("dev-3")
    assert opened.overview().totals["predictions"] == 5


def test_a_corrupt_compressed_body_is_counted_as_malformed_by_its_reason() -> None:
    state = FleetState(clock=Clock())
    state.ingest(Message("edge1", "inference", "predictions", {}, {**JSON, "contentEncoding": "gzip"}, b"\x1f\x8bjunk"))

    overview = state.overview()
    assert overview.totals["malformed"] == 1 and overview.malformed_by_reason == {"bad_encoding": 1}


def test_a_bad_reading_does_not_lose_its_neighbours() -> None:
    state = FleetState(clock=Clock())
    state.ingest(batch([prediction("dev-8", 1), {"schema": "edgefleet.telemetry/1"}, prediction("dev-8", 2)]))
    totals = state.overview().totals
    assert (totals["predictions"], totals["malformed"]) == (2, 1)


def test_the_ring_keeps_the_latest_points_oldest_first() -> None:
    state = FleetState(clock=Clock(), points_per_device=3)
    state.ingest(batch([prediction("dev-9", seq, value=float(seq), label=None) for seq in range(5)]))
    view = state.device_view("dev-9")
    assert view is not None
    assert view["points"]["predicted"] == [2.0, 3.0, 4.0]
    assert view["mse"] != view["mse"]  # NaN: no labelled prediction


def test_the_device_table_sorts_and_limits() -> None:
    state = FleetState(clock=Clock())
    for index in range(5):
        state.ingest(batch([prediction(f"dev-{index}", seq) for seq in range(index + 1)]))
    table = state.device_table("predictions", descending=True, limit=2)
    assert table["device_id"] == ["dev-4", "dev-3"]
    with pytest.raises(ValueError, match="sort_by"):
        state.device_table("nope")


def test_memory_stays_bounded_for_10000_devices() -> None:
    state = FleetState(clock=Clock(), max_devices=10_000)
    tracemalloc.start()
    try:
        for start in range(0, 12_000, 50):
            items = [prediction(f"dev-{n:05d}", seq) for n in range(start, start + 50) for seq in range(3)]
            state.ingest(batch(items))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    overview = state.overview()
    assert overview.devices == 10_000
    assert overview.totals["dropped_new_devices"] == 2_000 * 3
    # Four 120-point float64 rings and two features per device: ~4 KB each, ~40 MB for the fleet.
    assert peak_bytes < 80 * 1024 * 1024
    assert len(state.device_table(limit=500)["device_id"]) == 500
