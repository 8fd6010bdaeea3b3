"""The sensor on an authenticated TLS field broker (real Mosquitto 2.0, real paho): in, refused, fixed, distrusted."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgefleet.endpoints import TELEMETRY
from edgefleet.field import FIELD_TOPIC_FILTER, field_topic
from edgefleet.mqtt_login import tls_context
from edgefleet.process import load_settings
from edgefleet_cli.local_edge import free_port
from edgehub.broker import Broker, Listener
from edgehub.certs import ensure_certs
from modules.sensor.service import SensorService
from modules.sensor.settings import SensorSettings
from tests.edge_fixtures import reading, wait_for
from tests.field_auth import (
    GATEWAY_PASSWORD,
    GATEWAY_USER,
    SENSOR_PASSWORD,
    SENSOR_USER,
    FieldAuthBroker,
    secret_file,
)
from tests.modules.fakes import FakeModuleClient

DESIRED = {"batchWindowMs": 50, "maxBatchBytes": 65_536, "fieldTopic": FIELD_TOPIC_FILTER, "enabled": True}


def _sensor(
    tmp_path: Path, broker: FieldAuthBroker, password: str = SENSOR_PASSWORD, ca_file: Path | None = None
) -> tuple[SensorService, FakeModuleClient]:
    settings = load_settings(
        SensorSettings,
        field_mqtt_host="127.0.0.1",
        field_mqtt_port=broker.port,
        field_mqtt_ca_file=str(ca_file or broker.certs.ca_cert),
        field_mqtt_username=SENSOR_USER,
        field_mqtt_password_file=str(secret_file(tmp_path / "sensor-password", password)),
        state_dir=tmp_path / "state",
        report_interval_s=60.0,
    )
    client = FakeModuleClient(DESIRED)
    service = SensorService(settings, client)
    assert service.start(threading.Event())
    return service, client


class Gateway:
    """Field devices behind one gateway: a paho client logged in as `gateway` over TLS."""

    def __init__(self, broker: FieldAuthBroker) -> None:
        self.client = mqtt.Client(client_id="test-gateway", clean_session=True, protocol=mqtt.MQTTv311)
        self.client.tls_set_context(tls_context(broker.certs.ca_cert))
        self.client.username_pw_set(GATEWAY_USER, GATEWAY_PASSWORD)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def publish(self, device_id: str, seq: int) -> None:
        info = self.client.publish(field_topic(device_id), json.dumps(reading(device_id, seq)), qos=1)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _forwarded(client: FakeModuleClient) -> list[tuple[str, int]]:
    return [(r["device_id"], r["seq"]) for m in client.sent(TELEMETRY) for r in m.json()["readings"]]


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.ERROR and "refused user 'sensor'" in r.getMessage()]


def test_the_sensor_reads_telemetry_over_tls_with_its_credentials_and_journals_it_before_forwarding(
    tmp_path: Path, field_auth_broker: FieldAuthBroker
) -> None:
    service, client = _sensor(tmp_path, field_auth_broker)
    gateway = Gateway(field_auth_broker)
    try:
        wait_for(lambda: service.stats()["subscribed"] == FIELD_TOPIC_FILTER, timeout_s=10)
        for seq in (1, 2, 3):
            gateway.publish("dev-00001", seq)
        client.wait_until(TELEMETRY, lambda sent: len(_forwarded(client)) >= 3)
        assert _forwarded(client) == [("dev-00001", 1), ("dev-00001", 2), ("dev-00001", 3)]
        stats = service.stats()
        assert stats["journal"]["appended"] == 3  # each field message went to the journal first
        assert stats["field_connected"] and stats["field_auth_refused"] == 0 and stats["field_tls_errors"] == 0
    finally:
        gateway.close()
        service.stop()


def test_a_refused_password_is_logged_once_per_attempt_with_the_fix_and_the_sensor_gets_in_after_the_broker_reloads(
    tmp_path: Path, field_auth_broker: FieldAuthBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modules.sensor.service")
    service, client = _sensor(tmp_path, field_auth_broker, password="rotated-s3cret")
    gateway = Gateway(field_auth_broker)
    try:
        wait_for(lambda: service.stats()["field_auth_refused"] >= 3, timeout_s=15)
        # paho's reconnect delay doubles after every refusal (0.2, 0.4, 0.8 … 5 s): no spinning.
        before, started = service.stats()["field_auth_refused"], time.monotonic()
        time.sleep(2.0)
        during = service.stats()["field_auth_refused"] - before
        assert during <= 2, f"{during} attempts in {time.monotonic() - started:.1f} s"
        stats = service.stats()
        refusals = _refusals(caplog)
        assert stats["field_auth_refused"] - 1 <= len(refusals) <= stats["field_auth_refused"]
        message = refusals[0].getMessage()
        assert "not authorised" in message or "bad user name or password" in message
        assert "FIELD_MQTT_PASSWORD_FILE" in message and "reload the broker (SIGHUP)" in message
        assert "rotated-s3cret" not in caplog.text
        assert not [r for r in caplog.records if "Lost the field broker" in r.getMessage()]
        assert not stats["field_connected"] and "refused user 'sensor'" in stats["field_problem"]

        field_auth_broker.set_password(SENSOR_USER, "rotated-s3cret")  # the broker learns the new password
        field_auth_broker.reload()
        wait_for(lambda: service.stats()["subscribed"] == FIELD_TOPIC_FILTER, timeout_s=15)
        gateway.publish("dev-00002", 7)
        client.wait_until(TELEMETRY, lambda sent: ("dev-00002", 7) in _forwarded(client))
        assert service.stats()["field_problem"] is None
    finally:
        gateway.close()
        service.stop()


def test_a_ca_that_did_not_sign_the_brokers_certificate_is_logged_saying_to_set_the_right_ca_and_counted(
    tmp_path: Path, field_auth_broker: FieldAuthBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modules.sensor.service")
    stranger = ensure_certs(tmp_path / "another-ca", ["127.0.0.1"]).ca_cert
    service, _ = _sensor(tmp_path, field_auth_broker, ca_file=stranger)
    try:
        wait_for(lambda: service.stats()["field_tls_errors"] >= 2, timeout_s=15)
        stats: dict[str, Any] = service.stats()
        assert not stats["field_connected"] and stats["field_auth_refused"] == 0
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert "the broker's certificate does not verify" in errors[0]
        assert "set FIELD_MQTT_CA_FILE to the CA that signed it" in errors[0] and str(stranger) in errors[0]
        assert "FIELD_MQTT_CA_FILE" in stats["field_problem"]
    finally:
        service.stop()


def test_tls_to_a_plain_mqtt_port_is_logged_saying_to_check_field_mqtt_port(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modules.sensor.service")
    port = free_port()
    with Broker(tmp_path / "plain", "plain", [Listener("127.0.0.1", port)]):
        settings = load_settings(
            SensorSettings,
            field_mqtt_host="127.0.0.1",
            field_mqtt_port=port,
            field_mqtt_ca_file=str(ensure_certs(tmp_path / "tls", ["127.0.0.1"]).ca_cert),
            state_dir=tmp_path / "state",
            report_interval_s=60.0,
        )
        service = SensorService(settings, FakeModuleClient(DESIRED))
        assert service.start(threading.Event())
        try:
            wait_for(lambda: service.stats()["field_tls_errors"] >= 1, timeout_s=15)
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert "the TLS handshake failed" in errors[0]
            assert "check that FIELD_MQTT_PORT is the broker's TLS listener" in errors[0]
            assert not service.stats()["field_connected"]
        finally:
            service.stop()
