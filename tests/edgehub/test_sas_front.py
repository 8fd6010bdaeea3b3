"""Modules authenticate at the stand-in as at edgeHub: real Mosquitto, the real SDK, real paho clients."""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgehub.auth import CONNACK_NOT_AUTHORIZED, ModuleIdentity
from edgehub.standin import BROKER_HOST, EdgeHubStandIn
from tests.edge_fixtures import module_mqtt_client

from .conftest import ModuleProcess, StartEdge, wait_for

TELEMETRY_ROUTE = (
    'FROM /messages/modules/sensor/outputs/telemetry INTO BrokeredEndpoint("/modules/inference/inputs/telemetry")'
)


def connack_code(client: mqtt.Client, host: str, port: int = 8883, timeout_s: float = 10.0) -> int:
    """Connect and return the CONNACK's return code (0: accepted)."""
    codes: list[int] = []
    client.on_connect = lambda _c, _u, _f, rc: codes.append(rc)
    client.connect(host, port)
    client.loop_start()
    try:
        wait_for(lambda: codes, timeout_s=timeout_s)
        return codes[0]
    finally:
        client.disconnect()
        client.loop_stop()


def anonymous(standin: EdgeHubStandIn, client_id: str = "edge1/sensor") -> mqtt.Client:
    client = mqtt.Client(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(standin.ca_file))
    return client


def sdk_refusal(module: ModuleProcess, timeout_s: float = 30.0) -> str:
    """Wait for a module process whose connect() failed to exit; return its stderr."""
    module.process.wait(timeout_s)
    module.close()
    return module.stderr_path.read_text()


def test_a_client_without_credentials_is_refused_with_connack_5(start_edge: StartEdge) -> None:
    edge = start_edge({}, processes=False)

    assert connack_code(anonymous(edge.standin), edge.standin.module_host("sensor")) == CONNACK_NOT_AUTHORIZED
    assert edge.standin.front_stats()["sensor"] == {"refused": 1}


def test_the_module_brokers_behind_the_front_refuse_anonymous_clients_on_their_loopback_port(
    start_edge: StartEdge,
) -> None:
    edge = start_edge({}, processes=False)
    port = edge.standin._brokers[0].listeners[0].port
    client = mqtt.Client(client_id="edge1/sensor", clean_session=True, protocol=mqtt.MQTTv311)

    assert connack_code(client, BROKER_HOST, port) == CONNACK_NOT_AUTHORIZED


def test_a_module_with_a_wrong_key_is_refused_and_the_sdk_reports_bad_credentials(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    edge = start_edge({}, processes=False)
    env = edge.standin.module_environment("sensor")
    good_key = env["EdgeHubConnectionString"].split("SharedAccessKey=")[1]
    env["EdgeHubConnectionString"] = env["EdgeHubConnectionString"].replace(good_key, "A" * 43 + "=")

    stderr = sdk_refusal(ModuleProcess("sensor", env, tmp_path))

    assert "UnauthorizedError: Connection Refused: not authorised" in stderr  # paho's words for CONNACK 5
    assert edge.standin.front_stats()["sensor"].get("refused", 0) >= 1
    assert "accepted" not in edge.standin.front_stats()["sensor"]


def test_a_module_with_its_own_key_is_refused_on_another_modules_broker(start_edge: StartEdge, tmp_path: Path) -> None:
    edge = start_edge({}, processes=False)
    env = edge.standin.module_environment("inference")
    own, sensors = edge.standin.module_host("inference"), edge.standin.module_host("sensor")
    env["EdgeHubConnectionString"] = env["EdgeHubConnectionString"].replace(f"={own};", f"={sensors};")

    stderr = sdk_refusal(ModuleProcess("inference", env, tmp_path))

    assert "UnauthorizedError: Connection Refused: not authorised" in stderr  # paho's words for CONNACK 5
    assert edge.standin.front_stats() == {"sensor": {"refused": 1}, "inference": {}}


def test_a_token_for_another_device_or_an_expired_token_is_refused_with_connack_5(start_edge: StartEdge) -> None:
    edge = start_edge({}, processes=False)
    standin, host = edge.standin, edge.standin.module_host("sensor")
    sensor = standin.module_identity("sensor")
    other_device = ModuleIdentity(sensor.hub_hostname, "edge2", "sensor", sensor.key)

    assert connack_code(module_mqtt_client(other_device, standin.ca_file), host) == CONNACK_NOT_AUTHORIZED
    assert connack_code(module_mqtt_client(sensor, standin.ca_file, ttl_s=-5), host) == CONNACK_NOT_AUTHORIZED
    assert connack_code(module_mqtt_client(sensor, standin.ca_file), host) == 0
    assert standin.front_stats()["sensor"] == {"refused": 2, "accepted": 1}


def test_the_right_modules_send_receive_their_inputs_and_read_their_twins(start_edge: StartEdge) -> None:
    edge = start_edge({"telemetry": TELEMETRY_ROUTE}, desired={"inference": {"threshold": 2}})
    edge["sensor"].request("send", output="telemetry", body={"n": 1})

    records = wait_for(lambda: edge["inference"].inputs("telemetry")["records"])

    assert json.loads(records[0]["body"]) == {"n": 1}
    assert edge["inference"].request("get_twin")["twin"]["desired"]["threshold"] == 2
    assert edge.standin.front_stats() == {"sensor": {"accepted": 1}, "inference": {"accepted": 1}}


def test_the_sdk_renews_its_short_lived_token_by_reconnecting_and_keeps_sending(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    edge = start_edge({"telemetry": TELEMETRY_ROUTE}, modules=("sensor", "inference"), processes=False)
    standin = edge.standin
    inference = ModuleProcess("inference", standin.module_environment("inference"), tmp_path)
    # The SDK renews 120 s before expiry (SasTokenStage.DEFAULT_TOKEN_UPDATE_MARGIN): every 5 s here.
    sensor = ModuleProcess("sensor", standin.module_environment("sensor"), tmp_path, sastoken_ttl=125)
    try:
        inference.wait_ready()
        sensor.wait_ready()
        sent = 0
        deadline = time.monotonic() + 40
        while standin.front_stats()["sensor"].get("accepted", 0) < 3 and time.monotonic() < deadline:
            sensor.request("send", output="telemetry", body={"n": sent})
            sent += 1
            time.sleep(0.2)
        for _ in range(5):
            sensor.request("send", output="telemetry", body={"n": sent})
            sent += 1

        stats = standin.front_stats()["sensor"]
        assert stats["accepted"] >= 3 and "refused" not in stats  # connected, then renewed at least twice
        assert wait_for(lambda: inference.inputs("telemetry", count_only=True)["distinct"] == sent, timeout_s=20)
    finally:
        sensor.close()
        inference.close()


def test_a_module_identity_reads_and_writes_only_its_own_topics(start_edge: StartEdge) -> None:
    edge = start_edge({"all": "FROM /messages/* INTO $upstream"}, processes=False)
    standin = edge.standin
    received: list[str] = []
    granted: list[tuple[int, ...]] = []
    subscribed = threading.Event()
    spy = module_mqtt_client(standin.module_identity("sensor"), standin.ca_file)

    def on_subscribe(_c: Any, _u: Any, _mid: int, qos: tuple[int, ...]) -> None:
        granted.append(tuple(qos))
        subscribed.set()

    spy.on_message = lambda _c, _u, msg: received.append(msg.topic)
    spy.on_subscribe = on_subscribe
    assert connack_code(spy, standin.module_host("sensor")) == 0  # the key works
    spy.reconnect()
    spy.loop_start()
    try:
        wait_for(spy.is_connected)
        spy.subscribe([("#", 1), ("$iothub/#", 1), ("$iothub/twin/PATCH/properties/desired/#", 1)])
        assert subscribed.wait(10)
        # Allowed: its own event (the router takes it). Forged: answers and calls only edgeHub may send,
        # and another module's input; the broker drops those, so even its own `#` hears nothing of them.
        publishes = [
            ("devices/edge1/modules/sensor/messages/events/%24.on=telemetry", b"{}"),
            ("$iothub/twin/PATCH/properties/desired/?$version=99", b'{"interval_s": 0}'),
            ("$iothub/twin/res/200/?$rid=1", b"{}"),
            ("$iothub/methods/POST/reset/?$rid=1", b"{}"),
            ("devices/edge1/modules/inference/inputs/telemetry/", b"{}"),
        ]
        for topic, body in publishes:
            spy.publish(topic, body, qos=1).wait_for_publish(5)
        wait_for(lambda: standin.router.stats().get("received"))
        standin.router.apply_desired_patch("sensor", {"interval_s": 5})  # the real one arrives
        wait_for(lambda: received)
        time.sleep(0.5)
    finally:
        spy.disconnect()
        spy.loop_stop()

    assert granted[0][2] == 1  # its desired-properties topic; `#` and `$iothub/#` read nothing else
    assert received == ["$iothub/twin/PATCH/properties/desired/?$version=2"]
    assert standin.router.stats()["received"] == 1


def test_module_keys_and_env_files_are_private_and_stable_across_restarts(start_edge: StartEdge) -> None:
    edge = start_edge({}, processes=False)
    standin = edge.standin
    env_files = standin.write_env_files()
    keys_file = standin.state_dir / "secrets" / "module-keys"
    first = standin.module_environment("sensor")["EdgeHubConnectionString"]

    standin.stop()
    again = EdgeHubStandIn(
        standin.state_dir, "edge1", ["sensor", "inference"], [], {}, upstream=edge.upstream, ip_base=standin.ip_base
    )

    assert again.module_environment("sensor")["EdgeHubConnectionString"] == first
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_file.parent.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in env_files.values()} == {0o600}
    assert "SharedAccessKey=" in env_files["sensor"].read_text()
