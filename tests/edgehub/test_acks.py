"""Matching PUBACKs to publishes: a callback runs once, whether the PUBACK comes before or after registering."""

from __future__ import annotations

import pytest

from edgehub.acks import PubackBook

pytestmark = pytest.mark.fast


def test_a_puback_after_registering_runs_the_publishs_callback_once() -> None:
    book, acked = PubackBook("test"), []
    book.register(7, lambda: acked.append(7))
    assert acked == [] and book.pending() == 1
    book.acknowledged(7)
    book.acknowledged(7)  # a stray repeat settles nothing else
    assert acked == [7]


def test_a_puback_that_overtakes_publish_returning_runs_the_callback_at_registration() -> None:
    book, acked = PubackBook("test"), []
    book.acknowledged(3)  # paho's network thread was quicker than publish() returning mid 3
    book.register(3, lambda: acked.append(3))
    assert acked == [3] and book.pending() == 0


def test_an_early_puback_of_a_publish_nobody_waits_for_cannot_settle_a_later_publish_with_its_id() -> None:
    book, acked = PubackBook("test"), []
    book.acknowledged(5)
    book.register(5, None)  # e.g. a twin response: registered all the same
    book.register(5, lambda: acked.append("reused id"))  # 65,535 publishes later
    assert acked == []
    book.acknowledged(5)
    assert acked == ["reused id"]


def test_a_failing_callback_does_not_stop_the_thread_that_reports_the_puback() -> None:
    book = PubackBook("test")

    def fail() -> None:
        raise RuntimeError("bookkeeping bug")

    book.register(1, fail)
    book.acknowledged(1)
    assert book.pending() == 0
