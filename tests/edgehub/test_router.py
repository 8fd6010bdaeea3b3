"""Router pieces that need no broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.journal import SUFFIX, Journal, JournalError
from edgefleet.routes import Message, parse_routes
from edgehub.router import BrokerAddress, Router, RouterError, merge_patch

pytestmark = pytest.mark.fast


def test_a_twin_patch_merges_objects_and_null_deletes() -> None:
    twin: dict[str, Any] = {"a": 1, "nested": {"x": 1, "y": 2}, "gone": True}

    merge_patch(twin, {"nested": {"y": None, "z": 3}, "gone": None, "b": [1, 2], "$version": 9})

    assert twin == {"a": 1, "nested": {"x": 1, "z": 3}, "b": [1, 2]}


def test_the_router_refuses_unknown_modules() -> None:
    router = Router({"sensor": BrokerAddress("127.0.0.1", 1)}, "edge1", [], {"sensor": {"a": 1}}, lambda m, d: None)

    assert router.twin("sensor") == {"desired": {"a": 1, "$version": 1}, "reported": {"$version": 1}}
    with pytest.raises(RouterError, match="unknown module 'ghost'"):
        router.apply_desired_patch("ghost", {})
    with pytest.raises(RouterError, match="unknown module"):
        Router({}, "edge1", [], {"ghost": {}}, lambda m, d: None)


# -- the journal: the router's links point at a closed port, so only `$upstream` deliveries happen --

EVENT_TOPIC = "devices/edge1/modules/sensor/messages/events/%24.on=telemetry"
TO_UPSTREAM = parse_routes({"up": "FROM /messages/modules/sensor/outputs/telemetry INTO $upstream"})


@dataclass
class _Incoming:
    topic: str
    payload: bytes


class HoldingUpstream:
    """An upstream that takes messages but reports them durable only when told to."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.waiting: list[Callable[[], None]] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message, on_durable: Callable[[], None] | None = None) -> None:
        with self.lock:
            self.bodies.append(message.body)
            if on_durable is not None:
                self.waiting.append(on_durable)

    def make_durable(self) -> None:
        with self.lock:
            waiting, self.waiting = self.waiting, []
        for on_durable in waiting:
            on_durable()


def router_with(upstream: Any, journal: Journal) -> Router:
    return Router({"sensor": BrokerAddress("127.0.0.1", 1)}, "edge1", TO_UPSTREAM, {}, upstream, journal=journal)


def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}"))


def test_messages_the_upstream_has_not_made_durable_are_routed_again_after_a_restart(tmp_path: Path) -> None:
    held = HoldingUpstream()
    router = router_with(held, Journal(tmp_path)).start()
    for index in range(3):
        router._on_message("sensor", _Incoming(EVENT_TOPIC, f"m{index}".encode()))  # as paho's thread does
    wait_until(lambda: len(held.bodies) == 3)
    router.stop()  # like a crash: the upstream never said the messages are durable
    assert segments(tmp_path)

    again = HoldingUpstream()
    restarted = router_with(again, Journal(tmp_path)).start()
    try:
        wait_until(lambda: len(again.bodies) == 3)
        assert again.bodies == [b"m0", b"m1", b"m2"]
        assert restarted.stats()["replayed"] == 3
        again.make_durable()
        assert segments(tmp_path) == []  # delivered: nothing left to replay
    finally:
        restarted.stop()


def test_a_message_is_forgotten_once_the_upstream_made_it_durable(tmp_path: Path) -> None:
    held = HoldingUpstream()
    router = router_with(held, Journal(tmp_path)).start()
    try:
        router._on_message("sensor", _Incoming(EVENT_TOPIC, b"m"))
        wait_until(lambda: len(held.waiting) == 1)
        assert segments(tmp_path)
        held.make_durable()
        assert segments(tmp_path) == []
        assert router.stats()["journal_appended"] == 1
    finally:
        router.stop()


class BrokenJournal(Journal):
    def append(self, key: str, payload: bytes) -> int:
        raise JournalError(f"cannot write the journal {self.folder} ([Errno 28] No space left on device)")


def test_a_journal_that_cannot_write_is_counted_and_logged_and_routing_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    held = HoldingUpstream()
    router = router_with(held, BrokenJournal(tmp_path)).start()
    try:
        router._on_message("sensor", _Incoming(EVENT_TOPIC, b"m"))
        wait_until(lambda: held.bodies == [b"m"])
        assert router.stats()["journal_errors"] == 1
        assert "free disk space or make" in caplog.text
    finally:
        router.stop()


def test_a_route_naming_the_module_in_another_case_still_takes_its_messages(tmp_path: Path) -> None:
    # edgeHub matches a route's source ignoring case (BaseMessageSource), so a manifest that writes
    # turboFanRouter for module turbofanRouter works on the device; the stand-in must route it too.
    held = HoldingUpstream()
    routes = parse_routes({"up": "FROM /messages/modules/Sensor/outputs/TELEMETRY INTO $upstream"})
    address = {"sensor": BrokerAddress("127.0.0.1", 1)}
    router = Router(address, "edge1", routes, {}, held, journal=Journal(tmp_path)).start()
    try:
        router._on_message("sensor", _Incoming(EVENT_TOPIC, b"m"))
        wait_until(lambda: held.bodies == [b"m"])
        assert router.stats()["to_upstream"] == 1
    finally:
        router.stop()
