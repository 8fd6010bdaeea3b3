"""The local edge's dashboard hub broker, real processes: no anonymous client, the dashboard reads as itself."""

from __future__ import annotations

import stat
import threading

import paho.mqtt.client as mqtt

from edgefleet.hub_wire import HUB_DASHBOARD_USER, HUB_PUBLISHER_USER, HUB_SUBSCRIPTION
from edgefleet.mqtt_login import AUTH_REFUSALS, PasswordFile
from edgefleet_cli.local_edge import HUB_SECRETS_DIR, LocalEdge, free_port
from edgehub.hub_auth import client_password_file
from tests.edge_fixtures import next_ip_base, reading, wait_for


class _Reader:
    """A subscriber on the hub broker: its CONNACK and the topics it received."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.connack: int | None = None
        self.answered = threading.Event()
        self.topics: list[str] = []
        self.client = mqtt.Client(client_id=f"test-reader-{username}", clean_session=True)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._connected
        self.client.on_message = lambda _c, _u, msg: self.topics.append(msg.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _connected(self, client: mqtt.Client, userdata: object, flags: object, rc: int) -> None:
        self.connack = rc
        self.answered.set()
        if rc == 0:
            client.subscribe(HUB_SUBSCRIPTION, qos=0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_dashboard_hub_of_a_local_edge_refuses_anonymous_clients_and_the_dashboard_logs_in(
    start_edge, publisher_factory
):
    edge = start_edge(dashboard_port=free_port())
    assert edge.hub_port is not None
    secrets = edge.hub_secrets_dir
    password = PasswordFile.read(client_password_file(secrets, HUB_DASHBOARD_USER)).password.get_secret_value()
    anonymous = _Reader(edge.hub_port)
    reader = _Reader(edge.hub_port, HUB_DASHBOARD_USER, password)
    try:
        assert anonymous.answered.wait(10) and reader.answered.wait(10)
        assert anonymous.connack in AUTH_REFUSALS
        assert reader.connack == 0
        wait_for(lambda: f"Dashboard connected to the hub at 127.0.0.1:{edge.hub_port} as {HUB_DASHBOARD_USER}" in (
            edge.dashboard_log_path.read_text()
        ))  # fmt: skip
        publisher = publisher_factory(edge)
        publisher.publish(reading("dev-hub", 1))
        publisher.wait_acked(timeout_s=10)
        # The stand-in's copy of the prediction (gzip-compressed, declared in the topic's system properties)
        # arrives through the mirror, logged in as the stand-in.
        wait_for(lambda: any("/modules/inference/" in t and "%24.ce=gzip" in t for t in reader.topics), timeout_s=20)
    finally:
        anonymous.close()
        reader.close()
    assert f"u'{HUB_PUBLISHER_USER}'" in edge.hub_broker.log_tail()  # Mosquitto logs who connected
    assert anonymous.topics == []

    def mode(path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(secrets) == mode(secrets / "clients") == 0o700
    assert {mode(path) for path in secrets.rglob("*") if path.is_file()} == {0o600}


def test_a_local_edge_makes_its_hub_credentials_once_and_keeps_them_across_runs(tmp_path, deployment, small_bundle):
    def edge() -> LocalEdge:
        made = LocalEdge(
            tmp_path / "edge", deployment, bundle_dir=small_bundle, ip_base=next_ip_base(), dashboard_port=free_port()
        )
        made.stop()  # never started: nothing runs, the credentials stay
        return made

    first = edge()
    before = {path: path.read_text() for path in first.hub_secrets_dir.rglob("*") if path.is_file()}
    again = edge()

    assert first.hub_secrets_dir == tmp_path / "edge" / HUB_SECRETS_DIR
    assert {path: path.read_text() for path in again.hub_secrets_dir.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in before) == [
        f"{HUB_DASHBOARD_USER}.password",
        f"{HUB_PUBLISHER_USER}.password",
        "passwords",
    ]
