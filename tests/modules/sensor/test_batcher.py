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
    batches = [batch for item in items if (batch := batcher.add(item, now_s=0.0)) is not None]
    batches.append(batcher.take())
    assert all(len(batch) <= 1024 for batch in batches)
    seqs = [r.seq for batch in batches for r in decode_payload(batch)[0]]
    assert seqs == list(range(40))


def test_batcher_deadline_is_the_window_after_the_first_reading():
    batcher = Batcher(window_ms=250, max_bytes=4096)
    assert batcher.deadline() is None
    batcher.add(encode_json(reading("dev-1", 1)), now_s=10.0)
    batcher.add(encode_json(reading("dev-1", 2)), now_s=10.2)
    assert batcher.deadline() == 10.25
    assert len(json.loads(batcher.take())["readings"]) == 2
    assert batcher.deadline() is None


def test_batcher_with_a_zero_window_sends_each_reading_at_once():
    batcher = Batcher(window_ms=0, max_bytes=4096)
    batch = batcher.add(encode_json(reading("dev-1", 1)), now_s=0.0)
    assert batch is not None and len(batcher) == 0
