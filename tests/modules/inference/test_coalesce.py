"""Predictions coalesced across rounds: one batch per window or size cap, each segment held once."""

from __future__ import annotations

import json

import pytest

from modules.inference.coalesce import Coalescer

pytestmark = pytest.mark.fast


def item(seq: int, size: int = 100) -> bytes:
    text = json.dumps({"seq": seq, "pad": ""})
    return text.replace('""', '"' + "x" * (size - len(text)) + '"').encode()


class Held:
    def __init__(self) -> None:
        self.segments: list[object] = []

    def __call__(self, segment: object) -> None:
        self.segments.append(segment)


def test_a_batch_is_due_once_its_first_prediction_waited_the_window() -> None:
    coalescer = Coalescer(window_s=1.0, max_bytes=64 * 1024, hold=Held())

    assert coalescer.time_left(10.0) is None and not coalescer.due(10.0)
    coalescer.add(item(1), None, now_s=10.0)
    coalescer.add(item(2), None, now_s=10.6)  # a later round: the window runs from the first

    assert coalescer.time_left(10.6) == pytest.approx(0.4)
    assert not coalescer.due(10.9)
    assert coalescer.due(11.0)
    closed = coalescer.take()
    assert closed is not None and closed.count == 2
    assert [r["seq"] for r in json.loads(closed.body)["readings"]] == [1, 2]
    assert coalescer.take() is None and coalescer.time_left(11.0) is None


def test_a_window_of_zero_makes_every_batch_due_at_once() -> None:
    coalescer = Coalescer(window_s=0.0, max_bytes=64 * 1024, hold=Held())
    coalescer.add(item(1), None, now_s=5.0)

    assert coalescer.due(5.0)


def test_the_cap_closes_the_batch_before_the_prediction_that_would_overflow_it() -> None:
    coalescer = Coalescer(window_s=60.0, max_bytes=1000, hold=Held())

    closed = [c for seq in range(25) if (c := coalescer.add(item(seq), None, now_s=0.0)) is not None]
    closed.append(coalescer.take())

    assert all(c is not None and len(c.body) <= 1000 for c in closed)
    seqs = [r["seq"] for c in closed if c is not None for r in json.loads(c.body)["readings"]]
    assert seqs == list(range(25))
    assert len(closed) == 3  # 9 x 100 bytes + commas + envelope fit under 1,000 bytes


def test_each_segment_is_held_once_per_batch_and_handed_back_with_it() -> None:
    held = Held()
    coalescer = Coalescer(window_s=60.0, max_bytes=350, hold=held)

    first = [coalescer.add(item(seq), segment, now_s=0.0) for seq, segment in enumerate(["a", "a", "b"])]
    second = coalescer.add(item(3), "b", now_s=0.0)  # does not fit: closes the batch holding a and b

    assert first == [None, None, None]
    assert second is not None and second.segments == ("a", "b") and second.count == 3
    last = coalescer.take()
    assert last is not None and last.segments == ("b",)  # the next batch holds b again, on its own
    assert held.segments == ["a", "b", "b"]


def test_a_new_cap_applies_to_the_next_prediction() -> None:
    coalescer = Coalescer(window_s=60.0, max_bytes=64 * 1024, hold=Held())
    coalescer.add(item(1), None, now_s=0.0)
    coalescer.add(item(2), None, now_s=0.0)

    coalescer.configure(window_s=0.5, max_bytes=150)
    closed = coalescer.add(item(3), None, now_s=0.0)

    assert closed is not None and closed.count == 2
    assert coalescer.due(0.5)
