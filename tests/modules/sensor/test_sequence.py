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


def test_a_seq_far_ahead_is_taken_once_without_moving_the_devices_window():
    tracker = SequenceTracker(jump_limit=10_000)
    for seq in range(1, 11):
        tracker.observe("a", seq)
    assert tracker.observe("a", 10**9) is Verdict.JUMP
    assert tracker.observe("a", 10**9) is Verdict.DUPLICATE  # a redelivered jump is still a duplicate
    # The genuine readings that follow carry on from where the device really is.
    assert [tracker.observe("a", seq) for seq in range(11, 61)] == [Verdict.NEXT] * 50
    counters = tracker.counters()
    assert (counters["seq_jumps"], counters["seq_missing"], counters["seq_duplicates"]) == (1, 0, 1)


def test_an_impostor_interleaving_far_ahead_seqs_never_mutes_the_genuine_device():
    tracker = SequenceTracker(jump_limit=10_000)
    tracker.observe("a", 0)
    verdicts = []
    for seq in range(1, 51):
        assert tracker.observe("a", 5_000_000 + seq) is Verdict.JUMP
        verdicts.append(tracker.observe("a", seq))
    assert verdicts == [Verdict.NEXT] * 50
    assert tracker.counters()["seq_jumps"] == 50


def test_a_seq_exactly_at_the_jump_limit_moves_the_window_and_one_beyond_does_not():
    tracker = SequenceTracker(jump_limit=100)
    tracker.observe("a", 0)
    assert tracker.observe("a", 100) is Verdict.GAP
    assert tracker.observe("a", 201) is Verdict.JUMP
    assert tracker.observe("a", 101) is Verdict.NEXT


def test_jumped_seqs_cannot_evict_the_devices_recent_seqs_from_the_duplicate_window():
    tracker = SequenceTracker(jump_limit=10)
    tracker.observe("a", 1)
    tracker.observe("a", 2)
    for seq in range(1000, 2000):
        tracker.observe("a", seq)
    assert tracker.observe("a", 2) is Verdict.DUPLICATE
