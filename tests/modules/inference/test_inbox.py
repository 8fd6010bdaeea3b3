"""The inference journal over an in-memory edgeHub: a message is on disk until every answer was acknowledged."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.iot.device import Message

from edgefleet.endpoints import DEADLETTER, PREDICTIONS, TELEMETRY
from edgefleet.journal import SUFFIX, Journal
from modules.inference.inbox import JOURNAL_DIR, LEGACY_SPOOL_DIR
from modules.inference.service import InferenceService
from modules.inference.settings import InferenceSettings
from tests.modules.fakes import FakeModuleClient
from tests.modules.inference.faulty_bundle import write_faulty_bundle
from tests.modules.inference.test_service import batch, predictions, reading, write_tiny_bundle

pytestmark = pytest.mark.fast


class HeldEdgeHub(FakeModuleClient):
    """A fake edgeHub that acknowledges the held outputs only when the test says so, and reads the twin on cue."""

    def __init__(self) -> None:
        super().__init__()
        self._gate = threading.Condition()
        self._held: set[str] = set()
        self.twin_read = threading.Event()
        self.twin_read.set()

    def hold(self, *outputs: str) -> None:
        with self._gate:
            self._held.update(outputs)

    def acknowledge(self, *outputs: str) -> None:
        """Let the sends to `outputs` (all when none named) complete, now and from now on."""
        with self._gate:
            self._held.difference_update(outputs or set(self._held))
            self._gate.notify_all()

    def send_message_to_output(self, message: Message, output_name: str) -> None:
        with self._gate:
            while output_name in self._held:
                self._gate.wait()
        super().send_message_to_output(message, output_name)

    def get_twin(self) -> dict[str, Any]:
        assert self.twin_read.wait(10)
        return super().get_twin()


@pytest.fixture(autouse=True)
def _keep_the_log_level() -> Iterator[None]:
    # The service sets the root level from the twin's logLevel: give the other tests theirs back.
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def _settings(tmp_path: Path, bundle: Path | None = None) -> InferenceSettings:
    return InferenceSettings(
        bundle_dir=bundle or write_tiny_bundle(tmp_path / "bundle", "v1"),
        state_dir=tmp_path / "state",
        edge_device="edge-test",
        report_interval_s=60.0,
    )


def _segments(settings: InferenceSettings) -> list[Path]:
    return sorted((settings.state_dir / JOURNAL_DIR).glob(f"*{SUFFIX}"))


def _one_segment_per_message(settings: InferenceSettings) -> Journal:
    return Journal(settings.state_dir / JOURNAL_DIR, max_segment_bytes=1)


def _eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.01)


@pytest.fixture
def hub() -> HeldEdgeHub:
    return HeldEdgeHub()


@pytest.fixture
def stoppable(hub: HeldEdgeHub) -> Iterator[list[InferenceService]]:
    """Services to stop after the test (edgeHub acknowledging everything first, so stopping is quick)."""
    started: list[InferenceService] = []
    yield started
    hub.acknowledge()
    for service in started:
        service.stop()


def test_a_segment_is_deleted_only_when_every_output_carrying_its_readings_was_acknowledged(tmp_path, hub, stoppable):
    settings = _settings(tmp_path)
    service = InferenceService(settings, hub, _one_segment_per_message(settings))
    stoppable.append(service)
    hub.hold(PREDICTIONS, DEADLETTER)
    hub.twin_read.clear()  # both messages wait in the queue, so one round packs them into one batch
    starting = threading.Thread(target=service.start, args=(threading.Event(),))
    starting.start()
    _eventually(lambda: hub.on_message_received is not None)
    hub.deliver(TELEMETRY, batch(reading("never-seen", 1), {**reading("never-seen", 2), "seq": -2}))
    hub.deliver(TELEMETRY, batch(reading("never-seen", 3)))
    hub.twin_read.set()
    starting.join()
    first, second = _segments(settings)
    _eventually(lambda: service.outbox.pending() == 2)  # one batch of both messages' readings, one dead letter

    hub.acknowledge(DEADLETTER)
    _eventually(lambda: service.outbox.stats()["sent"].get(DEADLETTER) == 1)
    assert _segments(settings) == [first, second]  # the batch still carries a reading of each message

    hub.acknowledge(PREDICTIONS)
    assert set(predictions(hub, 2)) == {("never-seen", 1), ("never-seen", 3)}
    _eventually(lambda: _segments(settings) == [])
    assert service.stats()["journal"]["segments_pending"] == 0


def test_a_message_waits_in_the_journal_while_its_prediction_is_not_acknowledged(tmp_path, hub, stoppable):
    settings = _settings(tmp_path)
    service = InferenceService(settings, hub, _one_segment_per_message(settings))
    stoppable.append(service)
    assert service.start(threading.Event())
    hub.hold(PREDICTIONS)
    hub.deliver(TELEMETRY, reading("never-seen", 1))
    _eventually(lambda: service.outbox.pending() == 1)
    time.sleep(0.1)  # time enough for a wrong release to delete it
    assert len(_segments(settings)) == 1
    assert service.stats()["journal"]["segments_pending"] == 1

    hub.acknowledge(PREDICTIONS)
    _eventually(lambda: _segments(settings) == [])


@pytest.mark.parametrize("fleet_fails", [False, True], ids=["fleet-answers", "fleet-fails-too"])
def test_quarantined_fallback_and_dead_lettered_readings_still_free_their_segment(tmp_path, fleet_fails, hub):
    settings = _settings(tmp_path, write_faulty_bundle(tmp_path / "bundle", fleet_fails=fleet_fails))
    service = InferenceService(settings, hub)
    assert service.start(threading.Event())
    try:
        hub.hold(PREDICTIONS, DEADLETTER)
        hub.deliver(TELEMETRY, batch(*(reading("dev-broken", seq) for seq in range(1, 5))))  # raises at predict
        hub.deliver(TELEMETRY, b"{not json")
        hub.deliver(TELEMETRY, batch({**reading("dev-a", 1), "seq": -1}))
        _eventually(lambda: service.outbox.pending() >= 3)
        assert _segments(settings)  # nothing answered yet, so the readings are still on disk

        hub.acknowledge()
        _eventually(lambda: _segments(settings) == [])
        stats = service.stats()
        assert stats["quarantined_devices"] == 1
        expected = {"not_json": 1, "bad_seq": 1} | ({"prediction_failed": 4} if fleet_fails else {})
        assert stats["deadletters"] == expected
        assert stats["predictions"] == (0 if fleet_fails else 4)
        assert stats["journal"]["segments_pending"] == 0
    finally:
        service.stop()


def test_messages_handed_over_while_stopping_stay_in_the_journal_and_are_answered_after_the_restart(tmp_path):
    settings = _settings(tmp_path)
    client = FakeModuleClient()
    first = InferenceService(settings, client)
    assert first.start(threading.Event())
    client.hand_over_at_shutdown(TELEMETRY, reading("dev-own", 41))
    client.hand_over_at_shutdown(TELEMETRY, reading("never-seen", 42))
    first.stop()
    assert client.sent(PREDICTIONS) == []
    assert len(_segments(settings)) == 1
    assert first.stats()["kept_for_next_start"] == 2

    restarted = FakeModuleClient()
    second = InferenceService(settings, restarted)
    assert second.start(threading.Event())
    try:
        answered = predictions(restarted, 2)
        assert set(answered) == {("dev-own", 41), ("never-seen", 42)}
        _eventually(lambda: _segments(settings) == [])  # answered, so not replayed a second time
    finally:
        second.stop()


def test_what_a_killed_run_left_unanswered_is_answered_first_at_the_next_start(tmp_path, hub):
    settings = _settings(tmp_path)
    killed = InferenceService(settings, hub)
    assert killed.start(threading.Event())
    hub.hold(PREDICTIONS)
    hub.deliver(TELEMETRY, batch(reading("never-seen", 1), reading("never-seen", 2)))
    _eventually(lambda: killed.outbox.pending() == 1)
    # Never stopped nor acknowledged, as after a kill -9: only the journal on disk remains.

    restarted = HeldEdgeHub()
    restarted.twin_read.clear()
    second = InferenceService(settings, restarted)
    starting = threading.Thread(target=second.start, args=(threading.Event(),))
    starting.start()
    _eventually(lambda: restarted.on_message_received is not None)
    restarted.deliver(TELEMETRY, reading("never-seen", 3))  # new, while the twin is read
    restarted.twin_read.set()
    starting.join()
    try:
        answered = predictions(restarted, 3)
        order = [item["seq"] for message in restarted.sent(PREDICTIONS) for item in message.json()["readings"]]
        assert order == [1, 2, 3] and set(answered) == {("never-seen", seq) for seq in (1, 2, 3)}
        _eventually(lambda: _segments(settings) == [])
    finally:
        second.stop()


def test_a_spool_file_an_older_release_left_is_answered_once_and_removed(tmp_path):
    settings = _settings(tmp_path)
    spool = settings.state_dir / LEGACY_SPOOL_DIR
    spool.mkdir(parents=True)
    body = base64.b64encode(json.dumps(reading("never-seen", 7)).encode()).decode()
    (spool / "1700000000000000000.jsonl").write_text(
        json.dumps({"input": TELEMETRY, "received_s": 1.7e9, "body": body}) + "\n"
    )
    client = FakeModuleClient()
    service = InferenceService(settings, client)
    assert service.start(threading.Event())
    try:
        assert list(predictions(client, 1)) == [("never-seen", 7)]
        assert list(spool.glob("*.jsonl")) == []
        _eventually(lambda: _segments(settings) == [])
    finally:
        service.stop()


def test_a_journal_that_cannot_write_is_logged_with_the_fix_and_counted_and_the_reading_still_answered(
    tmp_path, caplog
):
    settings = _settings(tmp_path)
    client = FakeModuleClient()
    service = InferenceService(settings, client, _one_segment_per_message(settings))
    assert service.start(threading.Event())
    try:
        shutil.rmtree(settings.state_dir / JOURNAL_DIR)  # e.g. a volume unmounted under the module
        with caplog.at_level(logging.ERROR, logger="modules.inference.service"):
            client.deliver(TELEMETRY, reading("never-seen", 1))
            client.deliver(TELEMETRY, reading("never-seen", 2))

        assert set(predictions(client, 2)) == {("never-seen", 1), ("never-seen", 2)}
        assert service.stats()["journal"]["write_errors"] == 2
        assert service.reported()["counters"]["journal"]["write_errors"] == 2
        [logged] = [r.getMessage() for r in caplog.records if "journal" in r.getMessage()]  # once per interval
        assert "STATE_DIR" in logged and "Free space" in logged
    finally:
        service.stop()
