"""The module runtime's pure parts: connecting while edgeHub is not up yet."""

from __future__ import annotations

import threading

import pytest

from edgefleet.endpoints import SENSOR
from modules.runtime import EdgeLink
from modules.runtime import client as runtime_client

pytestmark = pytest.mark.fast


class _FlakyClient:
    """A module client whose edgeHub answers only from the `up_after`-th attempt (pure logic fake)."""

    def __init__(self, up_after: int) -> None:
        self.attempts = 0
        self.up_after = up_after

    def connect(self) -> None:
        self.attempts += 1
        if self.attempts < self.up_after:
            raise ConnectionError("edgeHub refused")


def test_edge_link_keeps_retrying_until_edgehub_answers(monkeypatch):
    monkeypatch.setattr(runtime_client, "CONNECT_RETRY_FIRST_S", 0.01)
    client = _FlakyClient(up_after=4)
    assert EdgeLink(client, SENSOR).connect(threading.Event()) is True
    assert client.attempts == 4


def test_edge_link_gives_up_quietly_when_stopped_before_edgehub_answers(monkeypatch):
    monkeypatch.setattr(runtime_client, "CONNECT_RETRY_FIRST_S", 0.01)
    stop = threading.Event()
    client = _FlakyClient(up_after=10**9)
    threading.Timer(0.1, stop.set).start()
    assert EdgeLink(client, SENSOR).connect(stop) is False
    assert client.attempts >= 2
