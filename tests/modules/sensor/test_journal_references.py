"""The sensor's journal: a field message stays on disk until edgeHub has every batch and dead letter carrying it."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
from azure.iot.device import Message

from edgefleet.endpoints import DEADLETTER, TELEMETRY
from edgefleet.errors import StartError
from edgefleet.field import FIELD_TOPIC_FILTER
from edgefleet.journal import SUFFIX, JournalError
from edgefleet.process import load_settings
from modules.sensor.service import JOURNAL_DIR, SensorService
from modules.sensor.settings import SensorSettings
from tests.edge_fixtures import reading
from tests.modules.fakes import FakeModuleClient
from tests.modules.sensor.test_startup import StubFieldClient

pytestmark = pytest.mark.fast

LONG_WINDOW = {"batchWindowMs": 60_000, "maxBatchBytes": 65_536, "fieldTopic": FIELD_TOPIC_FILTER, "enabled": True}


class GatedModuleClient(FakeModuleClient):
    """An edgeHub that acknowledges nothing until the test opens the gate."""

    def __init__(self, desired: dict[str, object]) -> None:
        super().__init__(desired)
        self.gate = threading.Event()

    def send_message_to_output(self, message: Message, output_name: str) -> None:
        self.gate.wait()
        super().send_message_to_output(message, output_name)


def _settings(state_dir: Path) -> SensorSettings:
    return load_settings(SensorSettings, field_mqtt_host="127.0.0.1", state_dir=state_dir, report_interval_s=60.0)


def _start(state_dir: Path, desired: dict[str, object] = LONG_WINDOW) -> tuple[SensorService, GatedModuleClient]:
    client = GatedModuleClient(desired)
    service = SensorService(_settings(state_dir), client, field_client=StubFieldClient())  # type: ignore[arg-type]
    assert service.start(threading.Event())
    return service, client


def _segments(state_dir: Path) -> list[Path]:
    return sorted((state_dir / JOURNAL_DIR).glob(f"*{SUFFIX}"))


def _take(service: SensorService, device: str, seq: int) -> None:
    service.take_field_message(f"fleet/{device}/telemetry", json.dumps(reading(device, seq)).encode())


def _wait(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def _sent_seqs(client: FakeModuleClient) -> list[int]:
    return [r["seq"] for m in client.sent(TELEMETRY) for r in m.json()["readings"]]


def test_a_reading_stays_in_the_journal_until_edgehub_acknowledged_its_batch(tmp_path):
    service, client = _start(tmp_path)
    try:
        _take(service, "dev-1", 1)
        _take(service, "dev-1", 2)
        assert len(_segments(tmp_path)) == 1  # the open batch holds it
        assert service.stats()["journal"]["segments_pending"] == 1
        client.patch_desired({"batchWindowMs": 50})  # closes the open batch: it waits in the outbox
        time.sleep(0.2)
        assert len(_segments(tmp_path)) == 1 and client.sent(TELEMETRY) == []
        client.gate.set()
        _wait(lambda: _segments(tmp_path) == [])
        assert _sent_seqs(client) == [1, 2]
        assert service.stats()["journal"]["segments_pending"] == 0
    finally:
        client.gate.set()
        service.stop()


def test_a_dead_lettered_message_stays_in_the_journal_until_edgehub_has_the_dead_letter(tmp_path):
    service, client = _start(tmp_path)
    try:
        service.take_field_message("fleet/dev-1/telemetry", b"not json")
        assert len(_segments(tmp_path)) == 1
        client.gate.set()
        client.wait_sent(DEADLETTER, 1)
        _wait(lambda: _segments(tmp_path) == [])
    finally:
        client.gate.set()
        service.stop()


def test_a_redelivered_reading_holds_nothing_once_its_first_copy_is_delivered(tmp_path):
    service, client = _start(tmp_path, {**LONG_WINDOW, "batchWindowMs": 0})
    try:
        client.gate.set()
        _take(service, "dev-1", 1)
        _wait(lambda: _segments(tmp_path) == [])
        _take(service, "dev-1", 1)  # a QoS 1 redelivery, dropped as a duplicate
        assert _segments(tmp_path) == [] and service.stats()["journal"]["segments_pending"] == 0
        assert _sent_seqs(client) == [1]
    finally:
        service.stop()


def test_a_stop_sends_the_open_batch_and_leaves_nothing_in_the_journal(tmp_path):
    service, client = _start(tmp_path)
    for seq in range(50):
        _take(service, "dev-1", seq)
    service.take_field_message("fleet/dev-1/telemetry", b"{")
    client.gate.set()
    service.stop()
    assert _sent_seqs(client) == list(range(50)) and len(client.sent(DEADLETTER)) == 1
    assert _segments(tmp_path) == []
    assert service.stats()["journal"]["segments_pending"] == 0


def test_what_a_killed_sensor_had_not_delivered_is_sent_at_the_next_start(tmp_path, caplog):
    killed, killed_client = _start(tmp_path)  # edgeHub never acknowledges: the open batch is all it has
    for seq in range(20):
        _take(killed, "dev-1", seq)
    killed.take_field_message("fleet/dev-1/telemetry", b"{")
    assert _segments(tmp_path)
    caplog.set_level(logging.INFO, logger="modules.sensor.service")

    again, client = _start(tmp_path, {**LONG_WINDOW, "batchWindowMs": 0})
    try:
        client.gate.set()
        client.wait_until(TELEMETRY, lambda sent: len(sent) == 20)
        client.wait_sent(DEADLETTER, 1)
        assert sorted(_sent_seqs(client)) == list(range(20))  # two sender threads: any order
        assert "Replayed 21 field message(s) (20 reading(s))" in caplog.text
        assert again.stats()["replayed_messages"] == 21
        _wait(lambda: _segments(tmp_path) == [])
    finally:
        again.stop()
        killed_client.gate.set()  # let the "killed" service's sender threads end


def test_a_journal_that_cannot_be_written_costs_no_reading_and_says_how_to_fix_it(tmp_path, caplog, monkeypatch):
    service, client = _start(tmp_path, {**LONG_WINDOW, "batchWindowMs": 0})
    client.gate.set()

    def disk_full(key: str, payload: bytes) -> int:
        raise JournalError(f"cannot write the journal {tmp_path} ([Errno 28] No space left on device)")

    monkeypatch.setattr(service.journal, "append", disk_full)
    try:
        for seq in range(3):
            _take(service, "dev-1", seq)
        client.wait_until(TELEMETRY, lambda sent: len(sent) == 3)
        assert _sent_seqs(client) == [0, 1, 2]
        assert service.stats()["journal_errors"] == 3
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1  # not one line per reading
        assert "No space left" in errors[0] and "STATE_DIR" in errors[0] and "still forwarded" in errors[0]
        reported = service.reported()["counters"]
        assert reported["journal_errors"] == 3 and reported["journal"]["appended"] == 0
    finally:
        service.stop()


def test_a_state_dir_that_cannot_be_created_stops_the_start_with_how_to_fix_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StartError, match="set STATE_DIR") as err:
        SensorService(_settings(blocker / "state"), FakeModuleClient(), field_client=StubFieldClient())  # type: ignore[arg-type]
    assert str(blocker / "state" / JOURNAL_DIR) in str(err.value)
