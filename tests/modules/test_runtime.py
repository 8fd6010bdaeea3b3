"""The module runtime's pure parts: connecting while edgeHub is not up yet, recovering a lost session, the outbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from edgefleet.endpoints import INFERENCE, SENSOR
from modules.runtime import EdgeLink, Outbox
from modules.runtime import client as runtime_client
from tests.edge_fixtures import wait_for
from tests.modules.fakes import FakeModuleClient

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


class _SessionLosingClient(FakeModuleClient):
    """An in-memory edgeHub that can forget the module's session, as a restarted broker does."""

    def __init__(self, desired: Mapping[str, Any] | None = None) -> None:
        super().__init__(desired)
        self.on_connection_state_change: Any = None

    def lose_session(self, desired: Mapping[str, Any]) -> None:
        """Drop the connection, forget every subscription, change the twin meanwhile, then reconnect."""
        self.connected = False
        self.on_connection_state_change()
        self.on_message_received = None
        self.on_twin_desired_properties_patch_received = None
        self.on_method_request_received = None
        self.desired = dict(desired)
        self.connected = True
        self.on_connection_state_change()


def _linked(client: FakeModuleClient, applied: list[Mapping[str, Any]], received: list[bytes]) -> EdgeLink:
    link = EdgeLink(client, INFERENCE)

    def register() -> None:
        link.on_input(lambda name, body, properties: received.append(body))
        link.on_desired(applied.append, applied.append)
        link.on_method("stats", lambda payload: (200, {"received": len(received)}))

    assert link.connect(threading.Event(), register)
    link.apply_twin()
    return link


def test_edge_link_subscribes_again_and_rereads_the_twin_after_edgehub_loses_its_session():
    client = _SessionLosingClient({"logLevel": "INFO", "$version": 1})
    applied: list[Mapping[str, Any]] = []
    received: list[bytes] = []
    link = _linked(client, applied, received)
    assert link.healthy()

    client.lose_session({"logLevel": "DEBUG", "$version": 2})

    wait_for(link.healthy, timeout_s=5)
    assert applied[-1]["logLevel"] == "DEBUG"  # a patch missed while deaf is caught up
    client.deliver("telemetry", b"{}")
    assert received == [b"{}"]
    assert client.call_method("stats").status == 200


def test_edge_link_is_unhealthy_while_edgehub_is_disconnected():
    client = _SessionLosingClient({"$version": 1})
    link = _linked(client, [], [])
    client.connected = False
    client.on_connection_state_change()
    assert not link.healthy()


def test_a_desired_patch_already_in_the_twin_read_is_not_applied_again():
    client = _SessionLosingClient({"logLevel": "DEBUG", "$version": 3})
    applied: list[Mapping[str, Any]] = []
    _linked(client, applied, [])
    assert client.on_twin_desired_properties_patch_received is not None

    client.on_twin_desired_properties_patch_received({"logLevel": "INFO", "$version": 2})
    client.on_twin_desired_properties_patch_received({"logLevel": "WARNING", "$version": 4})

    assert [patch["logLevel"] for patch in applied] == ["DEBUG", "WARNING"]


class _HangingClient(FakeModuleClient):
    """An edgeHub that went away: every call waits for a connection that never comes."""

    def __init__(self) -> None:
        super().__init__()
        self.connected = True  # as the SDK sees it a moment before noticing
        self._never = threading.Event()

    def patch_twin_reported_properties(self, reported_properties_patch: dict[str, Any]) -> None:
        self._never.wait()

    def shutdown(self) -> None:
        self._never.wait()

    def send_message_to_output(self, message: Any, output_name: str) -> None:
        self._never.wait()


def test_reporting_and_shutting_down_give_up_in_bounded_time_when_edgehub_hangs(monkeypatch):
    monkeypatch.setattr(runtime_client, "REPORT_TIMEOUT_S", 0.2)
    monkeypatch.setattr(runtime_client, "SHUTDOWN_TIMEOUT_S", 0.2)
    link = EdgeLink(_HangingClient(), INFERENCE)
    started = time.monotonic()
    link.report({"counters": {}})
    link.shutdown()
    assert time.monotonic() - started < 2.0


def test_closing_an_outbox_that_edgehub_does_not_drain_returns_in_time():
    outbox = Outbox(_never_send, threads=1, max_pending=2)
    for _ in range(3):  # one stuck in the sender, two filling the queue
        threading.Thread(target=outbox.put, args=("predictions", b"{}"), daemon=True).start()
    time.sleep(0.1)
    started = time.monotonic()
    outbox.close(timeout_s=0.3)
    assert time.monotonic() - started < 2.0


_stuck = threading.Event()


def _never_send(output: str, body: bytes, properties: Mapping[str, str] | None, content_encoding: str) -> None:
    _stuck.wait()


def test_a_held_outbox_sends_nothing_until_released_and_then_everything_in_order():
    sent: list[bytes] = []
    outbox = Outbox(lambda output, body, properties, encoding: sent.append(body), threads=1, held=True)
    try:
        for index in range(3):
            outbox.put("predictions", b"%d" % index)
        assert not outbox.drain(0.2) and sent == []
        outbox.release()
        assert outbox.drain(5.0)
        assert sent == [b"0", b"1", b"2"]
    finally:
        outbox.close()


def test_a_discarded_outbox_sends_nothing_and_runs_no_on_sent_callback():
    sent: list[bytes] = []
    acknowledged: list[int] = []
    outbox = Outbox(lambda output, body, properties, encoding: sent.append(body), threads=2, held=True)
    try:
        outbox.put("predictions", b"before", on_sent=lambda: acknowledged.append(1))
        outbox.discard()
        outbox.put("predictions", b"after", on_sent=lambda: acknowledged.append(2))
        assert outbox.drain(5.0)
        assert sent == [] and acknowledged == []
        assert outbox.stats()["discarded"] == 2
    finally:
        outbox.close()
