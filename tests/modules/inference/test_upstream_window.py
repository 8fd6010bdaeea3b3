"""The inference module's upstream output: rounds coalesced per window and cap, sent gzip-compressed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.endpoints import PREDICTIONS, TELEMETRY
from edgefleet.messages import BATCH_SCHEMA
from modules.inference.service import InferenceService
from modules.inference.settings import InferenceSettings
from tests.modules.fakes import FakeModuleClient
from tests.modules.inference.test_service import batch, reading, write_tiny_bundle

pytestmark = pytest.mark.fast


@pytest.fixture(autouse=True)
def _keep_the_log_level() -> Iterator[None]:
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def started(tmp_path: Path, desired: dict[str, object]) -> tuple[InferenceService, FakeModuleClient]:
    settings = InferenceSettings(
        bundle_dir=write_tiny_bundle(tmp_path / "bundle", "v1"),
        state_dir=tmp_path / "state",
        edge_device="edge-test",
        report_interval_s=60.0,
    )
    client = FakeModuleClient(desired=desired)
    service = InferenceService(settings, client)
    assert service.start(threading.Event())
    return service, client


def wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_rounds_within_the_window_go_up_as_one_gzip_message_and_their_journal_waits_for_it(tmp_path):
    service, client = started(tmp_path, {"upstreamWindowMs": 3000})
    try:
        client.deliver(TELEMETRY, batch(reading("dev-own", 1), reading("never-seen", 1)))
        wait_for(lambda: service.stats().get("predictions") == 2)
        client.deliver(TELEMETRY, reading("dev-own", 2))  # a second message: its own processing round
        wait_for(lambda: service.stats().get("predictions") == 3)

        assert client.sent(PREDICTIONS) == []  # still inside the window
        assert service.journal.stats()["segments_pending"] >= 1  # nothing forgotten before edgeHub has it

        [message] = client.wait_sent(PREDICTIONS, 1)
        assert (message.content_encoding, message.content_type) == ("gzip", "application/json")
        assert message.properties == {"schema": BATCH_SCHEMA}  # what routes need, outside the compressed body
        assert message.body[:2] == b"\x1f\x8b"
        opened = message.json()
        assert opened["schema"] == BATCH_SCHEMA
        assert sorted((r["device_id"], r["seq"]) for r in opened["readings"]) == [
            ("dev-own", 1),
            ("dev-own", 2),
            ("never-seen", 1),
        ]
        wait_for(lambda: service.journal.stats()["segments_pending"] == 0)
        stats = service.stats()
        assert stats["upstream_messages"] == 1
        assert stats["outbox"]["bytes"][PREDICTIONS] == len(message.body) < stats["upstream_bytes_before_compression"]
    finally:
        service.stop()


def test_a_window_of_zero_sends_each_round_on_its_own(tmp_path):
    service, client = started(tmp_path, {"upstreamWindowMs": 0})
    try:
        client.deliver(TELEMETRY, reading("dev-own", 1))
        client.wait_sent(PREDICTIONS, 1)
        client.deliver(TELEMETRY, reading("dev-own", 2))

        first, second = client.wait_sent(PREDICTIONS, 2)
        assert [r["seq"] for r in first.json()["readings"]] == [1]
        assert [r["seq"] for r in second.json()["readings"]] == [2]
    finally:
        service.stop()


def test_the_cap_splits_predictions_into_messages_no_bigger_than_it_before_compression(tmp_path):
    service, client = started(tmp_path, {"upstreamWindowMs": 60_000, "upstreamMaxBytes": 4096})
    try:
        client.deliver(TELEMETRY, batch(*(reading("never-seen", seq) for seq in range(1, 61))))
        wait_for(lambda: service.stats().get("predictions") == 60)

        sent = client.wait_sent(PREDICTIONS, 2)  # full batches go at once, whatever the window
        assert all(len(message.opened()) <= 4096 for message in sent)
    finally:
        service.stop()
    seqs = sorted(r["seq"] for message in client.sent(PREDICTIONS) for r in message.json()["readings"])
    assert seqs == list(range(1, 61))  # stopping sent the last, open batch


def test_stopping_sends_the_open_batch_at_once_instead_of_waiting_out_the_window(tmp_path):
    service, client = started(tmp_path, {"upstreamWindowMs": 60_000})
    client.deliver(TELEMETRY, reading("dev-own", 7))
    wait_for(lambda: service.stats().get("predictions") == 1)
    assert client.sent(PREDICTIONS) == []

    started_s = time.monotonic()
    service.stop()

    assert time.monotonic() - started_s < 10
    [message] = client.sent(PREDICTIONS)
    assert [r["seq"] for r in message.json()["readings"]] == [7]
    assert service.journal.stats()["segments_pending"] == 0


def test_a_desired_patch_changes_the_window_of_the_next_batches(tmp_path):
    service, client = started(tmp_path, {"upstreamWindowMs": 60_000})
    try:
        client.patch_desired({"upstreamWindowMs": 0})
        assert service.reported()["upstreamWindowMs"] == 0
        client.deliver(TELEMETRY, reading("dev-own", 1))

        client.wait_sent(PREDICTIONS, 1, timeout_s=5.0)
    finally:
        service.stop()


def test_a_window_given_as_a_string_is_rejected_and_the_last_good_one_stays(tmp_path):
    service, client = started(tmp_path, {"upstreamWindowMs": 250})
    try:
        client.patch_desired({"upstreamWindowMs": "0"})

        reported = service.reported()
        assert reported["upstreamWindowMs"] == 250
        assert "upstreamWindowMs" in reported["configError"]
    finally:
        service.stop()
