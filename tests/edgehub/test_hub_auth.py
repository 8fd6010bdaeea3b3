"""The sink's hub broker lets no one in anonymously: the stand-in only publishes, the dashboard only reads."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pandas as pd
import pytest
from pydantic import SecretStr

from edgefleet.hub_wire import HUB_DASHBOARD_USER, HUB_PUBLISHER_USER, HUB_SUBSCRIPTION, format_hub_topic
from edgefleet.mqtt_login import AUTH_REFUSALS
from edgefleet.routes import Message
from edgefleet_cli.local_edge import free_port
from edgehub.hub import HubPublisher
from tests.hub_logins import HubLogins

from .conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
JSON = {"contentType": "application/json", "contentEncoding": "utf-8"}


def telemetry(seq: int) -> Message:
    body = {"schema": "edgefleet.telemetry/1", "device_id": "dev-1", "seq": seq, "ts": "2026-11-20T10:00:00Z"}
    return Message("edge1", "sensor", "telemetry", {}, JSON, json.dumps({**body, "features": {"temp": 1.0}}).encode())


def lake_seqs(lake_dir: Path) -> list[int]:
    return sorted(pd.read_parquet(lake_dir)["seq"]) if list(lake_dir.glob("date=*/*.parquet")) else []


def sink_service(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgehub.sink_service", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


@dataclass
class Sink:
    port: int
    lake: Path
    process: subprocess.Popen[str]


@pytest.fixture
def sink(tmp_path: Path, hub_logins: HubLogins) -> Iterator[Sink]:
    """Run `python -m edgehub.sink_service` with the provisioned users file until the test ends."""
    port, lake, health = free_port(), tmp_path / "lake", tmp_path / "healthy"
    process = sink_service(
        "--listen", f"127.0.0.1:{port}", "--lake", lake, "--state-dir", tmp_path / "state",
        "--flush-every-s", 0.2, "--roll-every-s", 0.2, "--health-file", health, *hub_logins.sink_flags(),
    )  # fmt: skip
    try:
        wait_for(lambda: health.exists() or process.poll() is not None, timeout_s=60)
        assert process.poll() is None, process.communicate()[1]
        yield Sink(port, lake, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


class Client:
    """A raw paho client on the hub broker: what it was told at CONNECT and SUBSCRIBE, what it received."""

    def __init__(self, port: int, client_id: str, username: str | None = None, password: str | None = None) -> None:
        self.connack: int | None = None
        self.received: list[str] = []
        self.answered = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._connected
        self.client.on_subscribe = self._subscribed
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _connected(self, client: mqtt.Client, userdata: object, flags: object, rc: int) -> None:
        if self.connack is None:
            self.connack = rc
        self.answered.set()
        if rc == 0:
            client.subscribe(HUB_SUBSCRIPTION, qos=1)

    def _subscribed(self, client: mqtt.Client, userdata: object, mid: int, granted: tuple[int, ...]) -> None:
        self.subscribed.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_sinks_hub_broker_refuses_an_anonymous_client(sink: Sink) -> None:
    client = Client(sink.port, "test-anonymous")
    try:
        assert client.answered.wait(10)
    finally:
        client.close()

    assert client.connack in AUTH_REFUSALS
    assert not client.received


def test_a_message_forged_with_the_dashboards_login_never_reaches_the_lake(sink: Sink, hub_logins: HubLogins) -> None:
    forger = hub_logins.publisher(sink.port, "test-forger", user=HUB_DASHBOARD_USER)
    forger(telemetry(666))  # the broker acknowledges a denied publish (MQTT 3.1.1) and drops it
    assert forger.close(timeout_s=10)
    standin = hub_logins.publisher(sink.port, "test-standin")
    standin(telemetry(1))
    assert standin.close(timeout_s=10)

    # The forged message went in first: had the broker passed it on, it would be in the lake by now.
    assert wait_for(lambda: lake_seqs(sink.lake)) == [1]


def test_the_stand_ins_login_cannot_subscribe_to_read_the_telemetry(sink: Sink, hub_logins: HubLogins) -> None:
    spy = Client(sink.port, "test-spy", HUB_PUBLISHER_USER, hub_logins.password(HUB_PUBLISHER_USER))
    reader = Client(sink.port, "test-reader", HUB_DASHBOARD_USER, hub_logins.password(HUB_DASHBOARD_USER))
    try:
        assert spy.subscribed.wait(10) and reader.subscribed.wait(10)
        assert spy.connack == 0  # it gets in (to publish), it only may not read
        standin = hub_logins.publisher(sink.port, "test-standin")
        standin(telemetry(1))
        assert standin.close(timeout_s=10)
        wait_for(lambda: reader.received)
        wait_for(lambda: lake_seqs(sink.lake) == [1])
    finally:
        spy.close()
        reader.close()

    assert reader.received == [format_hub_topic(telemetry(1))]
    # Mosquitto 2.0 grants a wildcard subscription and checks the ACL per message it would deliver.
    assert spy.received == []


def test_a_wrong_password_is_refused_and_the_log_says_which_login_to_check(
    sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-password"  # as a stale password file would give it
    publisher = HubPublisher(
        "127.0.0.1", sink.port, "test-wrong", username=HUB_PUBLISHER_USER, password=SecretStr(wrong)
    )
    with caplog.at_level(logging.ERROR, logger="edgehub.hub"):
        publisher.start()
        try:
            refused = wait_for(lambda: [r.getMessage() for r in caplog.records if "refused" in r.getMessage()])
        finally:
            publisher.close(timeout_s=1)

    assert wrong not in " ".join(refused)
    assert refused == [
        f"Hub at 127.0.0.1:{sink.port} refused the connection as {HUB_PUBLISHER_USER}: Connection Refused: "
        "not authorised.; check --upstream-username and --upstream-password-file (EDGEHUB_UPSTREAM_*) "
        "against the sink's users file"
    ]  # once, not at every retry
    assert not publisher.healthy()


def test_a_world_readable_users_file_stops_the_sink_with_exit_2_and_the_fix(
    tmp_path: Path, hub_logins: HubLogins
) -> None:
    hub_logins.users_file.chmod(0o644)
    process = sink_service(
        "--listen", f"127.0.0.1:{free_port()}", "--lake", tmp_path / "lake", "--state-dir", tmp_path / "state",
        *hub_logins.sink_flags(),
    )  # fmt: skip
    _, err = process.communicate(timeout=60)

    assert process.returncode == 2
    assert f"run chmod 600 {hub_logins.users_file}" in err
    assert "Traceback" not in err


def test_a_sink_without_users_stops_with_exit_2_saying_how_to_give_them(tmp_path: Path) -> None:
    process = sink_service("--listen", f"127.0.0.1:{free_port()}", "--state-dir", tmp_path / "state")
    _, err = process.communicate(timeout=60)

    assert process.returncode == 2
    assert "pass --users-file PATH" in err and "--allow-anonymous for development only" in err
    assert "Traceback" not in err


def test_a_users_file_naming_the_sinks_own_identity_is_refused(tmp_path: Path, hub_logins: HubLogins) -> None:
    text = hub_logins.users_file.read_text()
    hub_logins.users_file.write_text(text + "edgefleet-lake-sink:" + text.split(":", 1)[1])
    process = sink_service("--listen", f"127.0.0.1:{free_port()}", "--state-dir", tmp_path, *hub_logins.sink_flags())
    _, err = process.communicate(timeout=60)

    assert process.returncode == 2
    assert "'edgefleet-lake-sink' is the sink's own identity; remove that line" in err


def test_with_allow_anonymous_a_development_sink_takes_anonymous_publishers(tmp_path: Path) -> None:
    port, lake, health = free_port(), tmp_path / "lake", tmp_path / "healthy"
    process = sink_service(
        "--listen", f"127.0.0.1:{port}", "--lake", lake, "--state-dir", tmp_path / "state",
        "--flush-every-s", 0.2, "--roll-every-s", 0.2, "--health-file", health, "--allow-anonymous",
    )  # fmt: skip
    try:
        wait_for(lambda: health.exists() or process.poll() is not None, timeout_s=60)
        publisher = HubPublisher("127.0.0.1", port, "test-anonymous").start()
        publisher(telemetry(7))
        assert publisher.close(timeout_s=10)
        assert wait_for(lambda: lake_seqs(lake)) == [7]
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert "The hub broker takes anonymous clients (--allow-anonymous): for development only" in err
