"""The sent-count report: per-device counts and what the edge should make of what was sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modules.sensor.sequence import SequenceTracker
from simulator.report import ReportBuilder, SimulationReport, write_report
from simulator.stream import Emission, TelemetryStream
from tests.simulator.conftest import profile
from tests.simulator.test_stream import ALL_FAULTS

pytestmark = pytest.mark.fast


def emission(
    device_id: str, seq: int, *, duplicate: bool = False, valid: bool = True, complete: bool = True
) -> Emission:
    return Emission(0.0, device_id, seq, "t", b"{}", duplicate, (), valid, complete)


def test_the_edge_expectation_counts_duplicates_gaps_late_readings_and_nans():
    builder = ReportBuilder()
    sends = [
        emission("a", 0),
        emission("a", 2),  # 1 is late: a gap first ...
        emission("a", 1),  # ... then filled
        emission("a", 1, duplicate=True),
        emission("a", 3, valid=False),  # dead-lettered: stays a gap
        emission("a", 3, duplicate=True, valid=False),
        emission("a", 4, complete=False),
        emission("b", 5),  # a device's first reading need not be seq 0
    ]
    for sent in sends:
        builder.record(sent)
    assert builder.expected_at_edge() == {
        "messages": 8,
        "sent": 6,
        "expected_valid": 5,
        "deadletter_non_finite": 2,
        "duplicates": 1,
        "missing_features": 1,
        "seq_missing": 1,
        "seq_late": 1,
        "seq_resets": 0,
    }
    (a, b) = builder.device_reports()
    assert (a.sent, a.duplicates_sent, a.first_seq, a.last_seq) == (5, 2, 0, 4)
    assert (b.device_id, b.sent, b.first_seq) == ("b", 1, 5)


def test_the_expectation_matches_the_sensor_modules_own_bookkeeping():
    stream = TelemetryStream.from_profile(profile(faults=ALL_FAULTS, duration_s=8.0))
    builder, tracker = ReportBuilder(), SequenceTracker()
    for sent in stream:
        builder.record(sent)
        if sent.valid:  # the sensor dead-letters NaN payloads before it looks at seqs
            tracker.observe(sent.device_id, sent.seq)
    expected, counters = builder.expected_at_edge(), tracker.counters()
    assert (expected["duplicates"], expected["seq_missing"], expected["seq_late"], expected["seq_resets"]) == (
        counters["seq_duplicates"],
        counters["seq_missing"],
        counters["seq_late"],
        counters["seq_resets"],
    )
    assert expected["seq_late"] > 0 and expected["seq_missing"] > 0 and expected["seq_resets"] == 0


def test_the_report_round_trips_through_json(tmp_path: Path):
    builder = ReportBuilder()
    builder.record(emission("a", 0))
    report = SimulationReport(
        mode="simulate",
        started_at=datetime(2026, 11, 21, tzinfo=UTC),
        elapsed_s=1.0,
        stopped_early=False,
        mqtt={"host": "127.0.0.1"},
        totals={"sent": 1},
        delivery={"unacknowledged": 0},
        expected_at_edge=builder.expected_at_edge(),
        devices=builder.device_reports(),
    )
    assert report.device("a").sent == 1 and report.sent == 1
    path = write_report(report, tmp_path / "out" / "report.json")
    obj = json.loads(path.read_text())
    assert obj == json.loads(json.dumps(report.to_json_obj()))
    assert obj["schema"] == "edgefleet.simulator-report/1" and obj["devices"]["a"]["faults"] == {}
    assert not list(path.parent.glob(".*"))  # no temp file left behind
