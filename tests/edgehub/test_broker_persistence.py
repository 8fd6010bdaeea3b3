"""Broker persistence: acknowledged QoS 1 messages survive a kill -9, and every broker saves alike.

Mosquitto saves by snapshot; the journal plugin (edgefleet.broker_journal) keeps what it
acknowledged since the last one. These tests kill the real broker with SIGKILL.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgefleet import broker_journal
from edgefleet.broker_journal import JOURNAL_PLUGIN_FILE, journal_plugin_path
from edgefleet.deployment import load_deployment
from edgefleet_cli.local_edge import LocalEdge
from edgehub.broker import AUTOSAVE, Broker, Listener, render_config
from tests.edge_fixtures import TEMPLATE, wait_for
from tests.edgehub.conftest import CollectingUpstream

REPO = Path(__file__).resolve().parents[2]
FIELD_CONF = REPO / "deployment" / "mosquitto" / "field.conf"
HOST = "127.0.0.1"
TOPIC = "field/readings"
SUBSCRIBER_ID = "sensor-persistent-session"
MESSAGES = 500


def _settings(conf_text: str) -> dict[str, str]:
    """Return a mosquitto.conf's `key value` lines (the last one wins, as in Mosquitto)."""
    pairs = (line.split(None, 1) for line in conf_text.splitlines() if line.strip() and not line.startswith("#"))
    return {pair[0]: pair[1].strip() if len(pair) > 1 else "" for pair in pairs}


def test_the_compose_field_broker_saves_as_often_as_the_insecure_field_broker_of_edgefleet_up(tmp_path: Path) -> None:
    # The secure default (python -m field_broker) is compared in tests/field_broker.
    edge = LocalEdge(
        tmp_path,
        load_deployment(TEMPLATE),
        bundle_dir=tmp_path / "bundle",
        ip_base="127.251.1",
        upstream=CollectingUpstream(),
        insecure_field=True,
    )
    assert isinstance(edge.field_broker, Broker)
    up = _settings(
        render_config(edge.field_broker.listeners, persistence_dir=tmp_path, autosave=edge.field_broker.autosave)
    )
    compose = _settings(FIELD_CONF.read_text())

    assert edge.field_broker.persistent
    for key in ("persistence", "autosave_interval", "autosave_on_changes"):
        assert compose[key] == up[key], key


def test_a_broker_snapshots_every_100_changes_and_journals_what_comes_between(tmp_path: Path) -> None:
    plugin = tmp_path / JOURNAL_PLUGIN_FILE
    conf = _settings(
        render_config([Listener(HOST, 1883)], persistence_dir=tmp_path, name="edge", journal_plugin=plugin)
    )

    assert (conf["autosave_interval"], conf["autosave_on_changes"]) == ("100", "true")
    assert conf["plugin"] == str(plugin)
    assert conf["plugin_opt_snapshot"] == str(tmp_path / conf["persistence_file"])
    assert conf["plugin_opt_journal"] == str(tmp_path / "mosquitto-edge.journal")
    assert conf["plugin_opt_sync"] == "false"


class _Session:
    """The consumer's persistent QoS 1 session; it only counts what the broker delivers."""

    def __init__(self, port: int) -> None:
        self.received: set[int] = set()
        self.deliveries: list[int] = []  # duplicates too
        self.last_at = time.monotonic()
        self.client = mqtt.Client(client_id=SUBSCRIBER_ID, clean_session=False)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(HOST, port)
        self.client.loop_start()
        self.client.subscribe(TOPIC, qos=1)
        assert subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        seq = json.loads(message.payload)["seq"]
        self.received.add(seq)
        self.deliveries.append(seq)
        self.last_at = time.monotonic()

    def wait_until_delivered(self, expected: int, quiet_s: float = 1.5, timeout_s: float = 30.0) -> None:
        """Return once `expected` messages arrived, or when nothing more came for `quiet_s`."""
        deadline = time.monotonic() + timeout_s
        while len(self.received) < expected and time.monotonic() - self.last_at < quiet_s:
            assert time.monotonic() < deadline, f"still receiving after {timeout_s} s"
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish_acknowledged(port: int, messages: int) -> None:
    """Publish numbered QoS 1 readings and return once the broker acknowledged every one."""
    client = mqtt.Client(client_id="field-device", clean_session=True)
    client.connect(HOST, port)
    client.loop_start()
    try:
        infos = [client.publish(TOPIC, json.dumps({"seq": seq}), qos=1) for seq in range(messages)]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published(), "the broker did not acknowledge a reading"
    finally:
        client.disconnect()
        client.loop_stop()


def _wait_until_saved(database: Path) -> None:
    """Wait until the snapshot that follows the last acknowledgement is on disk (its file stops changing)."""

    def stat() -> tuple[int, int]:
        info = database.stat()
        return info.st_size, info.st_mtime_ns

    wait_for(database.exists, timeout_s=10)
    previous = stat()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.15)
        current = stat()
        if current == previous:
            return
        previous = current


@pytest.fixture
def port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def broker(tmp_path: Path, port: int, request: pytest.FixtureRequest) -> Iterator[Broker]:
    autosave = getattr(request, "param", AUTOSAVE)
    running = Broker(tmp_path, "edge", [Listener(HOST, port)], persistent=True, autosave=autosave)
    yield running
    running.stop()


def _received_after_kill_and_restart(broker: Broker, port: int, *, wait_for_snapshot: bool) -> set[int]:
    broker.start()
    _Session(port).close()  # the consumer subscribed once, then went away: the broker queues for it
    _publish_acknowledged(port, MESSAGES)
    if wait_for_snapshot:
        _wait_until_saved(broker.state_dir / f"mosquitto-{broker.name}.db")
    broker.kill()
    broker.start()
    session = _Session(port)
    try:
        session.wait_until_delivered(MESSAGES)
    finally:
        session.close()
    return session.received


def test_a_kill_9_loses_none_of_500_acknowledged_messages_queued_for_an_offline_session(
    broker: Broker, port: int
) -> None:
    # Mosquitto acknowledges before it saves: only a kill inside the few ms of the snapshot that
    # follows the last acknowledgement could still lose that last message.
    received = _received_after_kill_and_restart(broker, port, wait_for_snapshot=True)

    assert received == set(range(MESSAGES))


def test_a_kill_9_of_the_field_broker_between_snapshots_loses_none_of_the_readings_it_acknowledged(
    broker: Broker, port: int
) -> None:
    # 500 readings, a snapshot every 100: up to 99 were acknowledged after the last one.
    received = _received_after_kill_and_restart(broker, port, wait_for_snapshot=False)

    assert received == set(range(MESSAGES))


def test_a_kill_9_soon_after_a_consumer_first_subscribed_keeps_its_session_and_its_readings(
    broker: Broker, port: int
) -> None:
    # Sessions are only in snapshots: fewer readings than one autosave interval would leave the
    # session unsaved, and the replayed readings with no one to go to.
    broker.start()
    _Session(port).close()
    _publish_acknowledged(port, AUTOSAVE.interval // 2)
    broker.kill()
    broker.start()
    session = _Session(port)
    try:
        session.wait_until_delivered(AUTOSAVE.interval // 2)
    finally:
        session.close()

    assert session.received == set(range(AUTOSAVE.interval // 2))


def test_a_clean_restart_delivers_each_queued_reading_once(broker: Broker, port: int) -> None:
    # A clean stop saves everything: the journal it leaves behind must not be replayed on top.
    broker.start()
    _Session(port).close()
    _publish_acknowledged(port, 150)
    broker.stop()
    broker.start()
    session = _Session(port)
    try:
        session.wait_until_delivered(150)
        time.sleep(1.0)  # anything replayed twice would follow right behind
    finally:
        session.close()

    assert sorted(session.deliveries) == list(range(150))


def test_a_journal_record_cut_short_by_the_kill_is_dropped_and_the_whole_ones_are_delivered(
    broker: Broker, port: int
) -> None:
    broker.start()
    _Session(port).close()
    _publish_acknowledged(port, 50)
    broker.kill()
    journal = broker.state_dir / f"mosquitto-{broker.name}.journal"
    with journal.open("ab") as torn:
        torn.write(b"\x40\x00\x00\x00\x12\x34")  # a record header whose body never made it
    broker.start()
    session = _Session(port)
    try:
        session.wait_until_delivered(50)
    finally:
        session.close()

    assert session.received == set(range(50))
    assert broker.running()


def test_make_setup_installs_the_journal_plugin_where_the_brokers_look_for_it() -> None:
    plugin = journal_plugin_path()

    assert plugin is not None, f"no {JOURNAL_PLUGIN_FILE}: run `make setup`"
    assert f"plugin {plugin}" in render_config(
        [Listener(HOST, 1883)], persistence_dir=Path("/state"), journal_plugin=plugin
    )


def test_a_broker_without_the_journal_plugin_says_a_kill_9_can_lose_acknowledged_messages(
    tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(broker_journal, "journal_plugin_path", lambda: None)
    running = Broker(tmp_path, "edge", [Listener(HOST, port)], persistent=True)
    try:
        running.start()
    finally:
        running.stop()

    assert "run `make setup`" in caplog.text
    assert "plugin" not in _settings(running.config_path.read_text())


def test_a_broker_without_persistence_loads_no_journal(tmp_path: Path, port: int) -> None:
    running = Broker(tmp_path, "edge", [Listener(HOST, port)], persistent=False)
    try:
        running.start()
    finally:
        running.stop()

    assert "plugin" not in _settings(running.config_path.read_text())
