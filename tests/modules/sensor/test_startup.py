"""The sensor at start over an in-memory edgeHub: its twin, its last good desired set, its field host."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgefleet.field import FIELD_TOPIC_FILTER
from edgefleet.process import load_settings
from modules.sensor.service import SensorService
from modules.sensor.settings import SensorSettings
from tests.modules.fakes import FakeModuleClient

pytestmark = pytest.mark.fast

GOOD = {"batchWindowMs": 100, "maxBatchBytes": 3900, "fieldTopic": FIELD_TOPIC_FILTER, "enabled": True}


class StubFieldClient:
    """Stand in for the paho client: records subscriptions, connects when the test says so."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []

    def connect_async(self, host: str, port: int, keepalive: int) -> None: ...

    def loop_start(self) -> None: ...

    def loop_stop(self) -> None: ...

    def disconnect(self) -> None: ...

    def subscribe(self, topic: str, qos: int) -> None:
        self.subscribed.append(topic)

    def unsubscribe(self, topic: str) -> None:
        self.subscribed.remove(topic)


def _settings(tmp_path: Path, host: str = "127.0.0.1") -> SensorSettings:
    return load_settings(SensorSettings, field_mqtt_host=host, state_dir=tmp_path / "state", report_interval_s=60.0)


def _start(
    settings: SensorSettings, desired: dict[str, Any]
) -> tuple[SensorService, FakeModuleClient, StubFieldClient]:
    client, field = FakeModuleClient(desired), StubFieldClient()
    service = SensorService(settings, client, field_client=field)  # type: ignore[arg-type]
    assert service.start(threading.Event())
    service._on_field_connect(field, None, {}, 0)  # type: ignore[arg-type]
    return service, client, field


def test_a_refused_patch_keeps_the_subscription_and_is_reported(tmp_path):
    service, client, field = _start(_settings(tmp_path), GOOD)
    try:
        client.patch_desired({"enabled": "no"})
        assert field.subscribed == [FIELD_TOPIC_FILTER]
        assert "enabled" in client.reported["configError"]
        client.patch_desired({"enabled": False})
        assert field.subscribed == [] and client.reported["configError"] is None
    finally:
        service.stop()


def test_a_restart_with_a_refused_twin_subscribes_with_the_last_good_values(tmp_path):
    settings = _settings(tmp_path)
    first, _, _ = _start(settings, GOOD)
    first.stop()

    second, client, field = _start(settings, {**GOOD, "enabled": "no", "batchWindowMs": "250"})
    try:
        assert field.subscribed == [FIELD_TOPIC_FILTER]
        assert second.desired.batch_window_ms == 100
        assert "last good values" in client.reported["configError"]
    finally:
        second.stop()


def test_a_first_start_with_a_refused_twin_subscribes_to_nothing_and_says_how_to_fix_it(tmp_path):
    service, client, field = _start(_settings(tmp_path), {"enabled": True})
    try:
        assert field.subscribed == []
        assert "fieldTopic" in client.reported["configError"]
        assert "fix the deployment" in client.reported["configError"]
    finally:
        service.stop()


def test_a_field_host_that_does_not_resolve_is_a_warning_at_start(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="modules.sensor.service")
    service, _, _ = _start(_settings(tmp_path, host="no-such-field-broker.invalid"), GOOD)
    try:
        warning = _logged(caplog, "FIELD_MQTT_HOST")
        assert "no-such-field-broker.invalid" in warning and "does not resolve" in warning
    finally:
        service.stop()


def _logged(caplog: pytest.LogCaptureFixture, text: str, timeout_s: float = 10.0) -> str:
    """Return the first log message containing `text`, waiting for the thread that logs it."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [record.getMessage() for record in caplog.records if text in record.getMessage()]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"nothing logged {text!r}"
        time.sleep(0.05)
