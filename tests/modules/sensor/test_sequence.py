"""Per-device sequence bookkeeping."""

from __future__ import annotations

import pytest

from modules.sensor.sequence import SequenceTracker, Verdict

pytestmark = pytest.mark.fast


def test_sequence_tracker_counts_gaps_duplicates_late_readings_and_restarts():
    tracker = SequenceTracker()
    verdicts = [tracker.observe("a", seq) for seq in (1, 2, 5, 5, 3, 0)]
    assert verdicts == [Verdict.FIRST, Verdict.NEXT, Verdict.GAP, Verdict.DUPLICATE, Verdict.LATE, Verdict.RESET]
    assert tracker.counters() == {
        "devices": 1,
        "seq_missing": 1,  # 3 and 4 were skipped; 3 arrived late
        "seq_duplicates": 1,
        "seq_late": 1,
        "seq_resets": 1,
        "seq_jumps": 0,
    }


def test_sequence_tracker_keeps_devices_apart_and_reset_zeroes_counters():
    tracker = SequenceTracker()
    assert tracker.observe("a", 7) is Verdict.FIRST
    assert tracker.observe("b", 7) is Verdict.FIRST
    assert tracker.observe("b", 9) is Verdict.GAP
    tracker.reset()
    assert tracker.counters()["seq_missing"] == 0
    assert tracker.observe("b", 9) is Verdict.DUPLICATE  # positions survive a counter reset
