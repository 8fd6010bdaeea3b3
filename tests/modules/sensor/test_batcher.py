"""Batching readings into envelopes bounded by bytes and time."""

from __future__ import annotations

import json

import pytest

from edgefleet.messages import decode_payload, encode_json
from modules.sensor.batcher import Batcher
from tests.edge_fixtures import reading

pytestmark = pytest.mark.fast


def test_batcher_never_exceeds_max_bytes_and_keeps_every_reading_in_order():
    batcher = Batcher(window_ms=1000, max_bytes=1024)
    items = [encode_json(reading("dev-1", seq)) for seq in range(40)]
    batches = [batch.body for item in items if (batch := batcher.add(item, now_s=0.0)) is not None]
    last = batcher.take()
    assert last is not None
    batches.append(last.body)
    assert all(len(batch) <= 1024 for batch in batches)
    seqs = [r.seq for batch in batches for r in decode_payload(batch)[0]]
    assert seqs == list(range(40))


def test_batcher_deadline_is_the_window_after_the_first_reading():
    batcher = Batcher(window_ms=250, max_bytes=4096)
    assert batcher.deadline() is None
    batcher.add(encode_json(reading("dev-1", 1)), now_s=10.0)
    batcher.add(encode_json(reading("dev-1", 2)), now_s=10.2)
    assert batcher.deadline() == 10.25
    batch = batcher.take()
    assert batch is not None and len(json.loads(batch.body)["readings"]) == 2
    assert batcher.deadline() is None


def test_batcher_with_a_zero_window_sends_each_reading_at_once():
    batcher = Batcher(window_ms=0, max_bytes=4096)
    batch = batcher.add(encode_json(reading("dev-1", 1)), now_s=0.0)
    assert batch is not None and len(batcher) == 0


def test_the_open_batch_holds_each_journal_segment_once_and_hands_the_references_over_when_taken():
    held: list[int] = []
    batcher = Batcher(window_ms=1000, max_bytes=4096, hold=held.append)
    for seq, segment in enumerate([1, 1, 2, 1, 2]):
        assert batcher.add(encode_json(reading("dev-1", seq)), now_s=0.0, segment=segment) is None
    assert held == [1, 2]
    batch = batcher.take()
    assert batch is not None and batch.segments == (1, 2)
    assert batcher.segments() == () and batcher.take() is None


def test_a_reading_that_overflows_the_batch_takes_its_segment_into_the_next_one():
    held: list[int] = []
    item = encode_json(reading("dev-1", 1))
    batcher = Batcher(window_ms=1000, max_bytes=len(item) * 2, hold=held.append)
    assert batcher.add(item, now_s=0.0, segment=7) is None
    full = batcher.add(encode_json(reading("dev-1", 2)), now_s=0.0, segment=7)
    assert full is not None and full.segments == (7,)
    # The same segment is held again: the full batch's reference goes with it to the outbox.
    assert held == [7, 7] and batcher.segments() == (7,)
