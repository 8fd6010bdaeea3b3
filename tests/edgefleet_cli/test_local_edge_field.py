"""The local edge's field broker, real processes: the secure one by default, the anonymous one on request."""

from __future__ import annotations

import os
import signal
import ssl
import threading

import paho.mqtt.client as mqtt

from edgefleet.mqtt_login import tls_context
from field_broker.identities import SENSOR_USER
from tests.edge_fixtures import lake_rows, reading, wait_for

NOT_AUTHORISED = mqtt.CONNACK_REFUSED_NOT_AUTHORIZED


def _connack(client: mqtt.Client, port: int, timeout_s: float = 5.0) -> int | None:
    """Connect and return the broker's CONNACK code, None when none came (the connection was dropped)."""
    answered: list[int] = []
    done = threading.Event()

    def on_connect(c: mqtt.Client, userdata: object, flags: object, rc: int) -> None:
        answered.append(rc)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda c, userdata, rc: done.set()
    try:
        client.connect("127.0.0.1", port)
    except (OSError, ssl.SSLError):
        return None
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return answered[0] if answered else None


def _sensor_connected(edge) -> bool:
    status, stats = edge.method("sensor", "stats", timeout_s=2.0)
    return status == 200 and bool(stats.get("field_connected"))


def test_the_field_broker_of_a_local_edge_refuses_anonymous_and_plain_clients_and_the_sensor_logs_in_with_tls(
    start_edge, publisher_factory
):
    edge = start_edge()
    ca_file = edge.field_ca_file
    assert ca_file is not None and ca_file.is_file()

    anonymous = mqtt.Client(client_id="anonymous-device", clean_session=True)
    anonymous.tls_set_context(tls_context(ca_file))
    assert _connack(anonymous, edge.field_port) == NOT_AUTHORISED
    plain = mqtt.Client(client_id="plain-device", clean_session=True)
    assert _connack(plain, edge.field_port) is None  # a TLS listener never answers plain MQTT

    env = edge.module_environment("sensor")
    assert env["FIELD_MQTT_CA_FILE"] == str(ca_file)
    assert env["FIELD_MQTT_USERNAME"] == SENSOR_USER
    assert wait_for(lambda: _sensor_connected(edge), timeout_s=10)
    assert f"as {SENSOR_USER}" in edge.field_broker.log_tail()  # Mosquitto logs who connected

    publisher = publisher_factory(edge)  # the gateway identity, over TLS
    publisher.publish(reading("dev-tls", 1))
    publisher.wait_acked(timeout_s=10)
    wait_for(lambda: "dev-tls" in set(lake_rows(edge)["device_id"]), timeout_s=20)


def test_a_field_broker_or_its_mosquitto_killed_with_sigkill_comes_back_and_the_sensor_reconnects(
    start_edge, publisher_factory
):
    edge = start_edge()
    broker = edge.field_broker
    mosquitto_pid_file = edge.workdir / "field" / "mosquitto.pid"

    for round_, victim in enumerate(("field broker", "its mosquitto"), start=1):
        old_pid = broker.pid
        target = old_pid if victim == "field broker" else int(mosquitto_pid_file.read_text())
        assert target is not None
        os.kill(target, signal.SIGKILL)
        wait_for(lambda: edge.broker_restarts()["field"] == round_, timeout_s=20)  # noqa: B023 (called at once)
        assert broker.pid != old_pid and broker.running()
        wait_for(lambda: _sensor_connected(edge), timeout_s=30)

    publisher = publisher_factory(edge)
    publisher.publish(reading("dev-back", 1))
    publisher.wait_acked(timeout_s=10)
    wait_for(lambda: "dev-back" in set(lake_rows(edge)["device_id"]), timeout_s=20)


def test_a_local_edge_with_insecure_field_takes_anonymous_plain_readings(start_edge, publisher_factory):
    edge = start_edge(insecure_field=True)

    assert edge.field_ca_file is None
    assert edge.field_endpoint().url == f"mqtt://127.0.0.1:{edge.field_port}"
    assert "FIELD_MQTT_CA_FILE" not in edge.module_environment("sensor")
    assert not edge.field_secrets_dir.exists()
    publisher = publisher_factory(edge)  # anonymous, plain MQTT
    publisher.publish(reading("dev-plain", 1))
    publisher.wait_acked(timeout_s=10)
    wait_for(lambda: "dev-plain" in set(lake_rows(edge)["device_id"]), timeout_s=20)
