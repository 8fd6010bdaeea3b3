"""A real simulator run against a real Mosquitto: what the report says was sent is what arrived."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

from edgefleet.messages import MessageError, decode_payload
from edgehub.broker import Broker
from modules.sensor.sequence import SequenceTracker
from simulator.drift import drift_seed
from simulator.run import run_replay, run_simulation
from simulator.stream import generate
from tests.simulator.conftest import Subscriber, profile, wait_for
from tests.simulator.test_stream import ALL_FAULTS


def port_of(broker: Broker) -> int:
    return broker.listeners[0].port


def test_a_subscriber_receives_exactly_what_the_report_says_was_sent(broker: Broker, subscriber: Subscriber):
    fleet = profile(faults=ALL_FAULTS, duration_s=4.0, device_types=[{"name": "u", "count": 50, "rate_per_s": 10.0}])
    report = run_simulation(fleet, threading.Event(), port=port_of(broker))
    messages = report.totals["messages"]
    assert report.delivery["unacknowledged"] == 0 and report.delivery["unsent"] == 0 and not report.stopped_early
    wait_for(lambda: subscriber.count() >= messages)
    time.sleep(0.2)  # nothing more may arrive
    received = subscriber.keys()
    assert sum(received.values()) == messages
    assert received == Counter((e.device_id, e.seq) for e in generate(fleet))  # every generated message, once
    for device in report.devices:
        mine = {seq: n for (device_id, seq), n in received.items() if device_id == device.device_id}
        assert sum(mine.values()) == device.sent + device.duplicates_sent
        assert len(mine) == device.sent and sum(n == 2 for n in mine.values()) == device.duplicates_sent
        if mine:
            assert (min(mine), max(mine)) == (device.first_seq, device.last_seq)
    # The edge's view of the same messages, in arrival order: the report predicted every counter.
    tracker, non_finite, accepted = SequenceTracker(), 0, 0
    for payload in subscriber.payloads:
        try:
            (reading,), _ = decode_payload(payload)
        except MessageError as err:
            assert err.reason == "non_finite"
            non_finite += 1
            continue
        accepted += tracker.observe(reading.device_id, reading.seq).value != "duplicate"
    expected = report.expected_at_edge
    assert (accepted, non_finite) == (expected["expected_valid"], expected["deadletter_non_finite"])
    counters = tracker.counters()
    assert counters["seq_duplicates"] == expected["duplicates"] and counters["seq_late"] == expected["seq_late"]
    assert counters["seq_missing"] == expected["seq_missing"]


def test_a_paced_run_takes_its_duration_reports_progress_and_writes_the_report(broker: Broker, tmp_path: Path):
    fleet = profile(speed=1.0, duration_s=1.5, device_types=[{"name": "u", "count": 10, "rate_per_s": 20.0}])
    progress: list[dict] = []
    started = time.monotonic()
    report = run_simulation(
        fleet, threading.Event(), port=port_of(broker), on_progress=progress.append, report_path=tmp_path / "r.json"
    )
    assert 1.4 <= time.monotonic() - started < 5.0
    assert report.sent == 300 and report.delivery["max_lag_s"] < 1.0
    assert progress and progress[-1]["done"] and progress[-1]["sent"] == 300
    assert any(not snapshot["done"] and 0 < snapshot["sent"] < 300 for snapshot in progress)
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["totals"]["sent"] == 300 and set(written["devices"]) == {f"dev-{i:05d}" for i in range(10)}
    assert written["expected_at_edge"]["expected_valid"] == 300
    assert written["start_ts"] == "2026-11-01T00:00:00Z" and written["end_ts"].startswith("2026-11-01T00:00:01.4")


def test_a_stop_ends_the_run_early_and_sends_everything_already_generated(broker: Broker, subscriber: Subscriber):
    fleet = profile(speed=1.0, duration_s=60.0, faults={"burst_rate": 0.3, "burst_readings": 10, "reorder_rate": 0.2})
    stop = threading.Event()
    threading.Timer(0.8, stop.set).start()
    started = time.monotonic()
    report = run_simulation(fleet, stop, port=port_of(broker))
    assert time.monotonic() - started < 5.0 and report.stopped_early
    wait_for(lambda: subscriber.count() >= report.totals["messages"])
    received = subscriber.keys()
    assert sum(received.values()) == report.totals["messages"] and report.delivery["unacknowledged"] == 0
    for device in report.devices:
        assert device.first_seq == 0 and device.sent == device.last_seq + 1  # no reading held back


def test_qos_0_publishes_everything_on_a_healthy_connection(broker: Broker, subscriber: Subscriber):
    fleet = profile(mqtt={"qos": 0, "port": port_of(broker)})
    report = run_simulation(fleet, threading.Event())
    assert report.mqtt["qos"] == 0 and report.delivery["acknowledged"] == report.totals["messages"] == 400
    wait_for(lambda: subscriber.count() >= 400)


def test_a_replay_keeps_the_recorded_pacing_times_the_speed(broker: Broker, subscriber: Subscriber, tmp_path: Path):
    path = tmp_path / "recorded.csv"
    path.write_text(
        "device_id,ts,seq,temperature_c,label\n"
        "dev-1,2026-11-01T00:00:00Z,5,20.5,1\n"
        "dev-1,2026-11-01T00:00:01Z,6,20.6,1\n"
        "dev-2,2026-11-01T00:00:02Z,0,20.7,1\n"
    )
    started = time.monotonic()
    report = run_replay(path, threading.Event(), port=port_of(broker), speed=2.0)
    assert 0.9 <= time.monotonic() - started < 4.0
    assert report.mode == "replay" and report.sent == 3 and report.source == str(path)
    wait_for(lambda: subscriber.count() >= 3)
    assert subscriber.keys() == Counter({("dev-1", 5): 1, ("dev-1", 6): 1, ("dev-2", 0): 1})


def test_the_report_lists_each_drift_events_kind_and_a_features_events_shift(broker: Broker, tmp_path: Path):
    drift = [
        {"at_fraction": 0.5, "device_fraction": 0.1},
        {"at_s": 0.5, "devices": ["dev-00003"], "kind": "features", "feature_shift": {"humidity_pct": -10}},
    ]
    fleet = profile(drift=drift)
    run_simulation(fleet, threading.Event(), port=port_of(broker), report_path=tmp_path / "r.json")
    relation, features = json.loads((tmp_path / "r.json").read_text())["drift"]
    assert relation == {
        "index": 0,
        "kind": "relation",
        "at_s": 1.0,
        "drift_seed": drift_seed(3, 0),
        "devices": relation["devices"],
    }
    assert len(relation["devices"]) == 2 and set(relation["devices"]) < {f"dev-{i:05d}" for i in range(20)}
    assert features == {
        "index": 1,
        "kind": "features",
        "at_s": 0.5,
        "drift_seed": drift_seed(3, 1),
        "feature_shift": {"humidity_pct": -10.0},
        "devices": ["dev-00003"],
    }
