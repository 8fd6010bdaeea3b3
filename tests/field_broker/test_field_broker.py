"""The field broker with real Mosquitto: who gets in, who may publish and read what, and how devices are added."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet.field import field_topic
from edgefleet_cli.cli import main as cli_main
from edgefleet_cli.field_secrets import add_device, init_field_dir
from edgehub.broker import AUTOSAVE
from field_broker.config import AUTOSAVE_INTERVAL, PERSISTENCE_FILE, ConfigFiles, render_config
from field_broker.identities import GATEWAY_USER, SENSOR_USER
from tests.edge_fixtures import wait_for
from tests.field_broker.conftest import REPO, Client, RunningBroker, start_field_broker, stop, wait_until_listening

NOT_AUTHORISED = 5  # CONNACK return code of MQTT 3.1.1
# Fewer than one autosave interval: without the journal plugin all of them would be lost.
READINGS_BEFORE_THE_KILL = AUTOSAVE_INTERVAL - 10


def _sensor(broker: RunningBroker) -> Client:
    sensor = broker.client(SENSOR_USER)
    assert sensor.connect() == 0
    assert sensor.subscribe("fleet/+/telemetry") == (1,)
    return sensor


def test_field_broker_refuses_an_anonymous_client(field_broker: RunningBroker) -> None:
    assert field_broker.client(None).connect() == NOT_AUTHORISED


def test_field_broker_lets_a_device_in_with_its_password_and_refuses_a_wrong_one(field_broker: RunningBroker) -> None:
    # The password file is ours (PBKDF2-SHA512 `$7$`): Mosquitto itself checks it here.
    right = field_broker.client("dev-a")
    assert right.connect() == 0
    right.close()
    assert field_broker.client("dev-a", password="not-the-password").connect() == NOT_AUTHORISED
    assert field_broker.client("dev-a", password=field_broker.passwords["dev-b"]).connect() == NOT_AUTHORISED


def test_the_sensor_identity_receives_the_telemetry_devices_publish(field_broker: RunningBroker) -> None:
    sensor = _sensor(field_broker)
    device = field_broker.client("dev-a")
    assert device.connect() == 0
    device.publish(field_topic("dev-a"), b"reading-a")
    wait_for(lambda: sensor.received, timeout_s=10)
    assert sensor.received == [(field_topic("dev-a"), b"reading-a")]


def test_field_broker_refuses_a_device_publishing_another_devices_topic(field_broker: RunningBroker) -> None:
    sensor = _sensor(field_broker)
    impostor = field_broker.client("dev-a")
    assert impostor.connect() == 0
    # Mosquitto (MQTT 3.1.1) acknowledges a denied publish: what counts is that nobody receives it.
    impostor.publish(field_topic("dev-b"), b"forged")
    impostor.publish("fleet/dev-b/other", b"forged")
    impostor.publish(field_topic("dev-a"), b"own")  # same connection, after the forged ones: a marker
    wait_for(lambda: sensor.received, timeout_s=10)
    time.sleep(0.3)
    assert sensor.received == [(field_topic("dev-a"), b"own")]


def test_a_device_cannot_subscribe_to_other_devices_telemetry(field_broker: RunningBroker) -> None:
    sensor = _sensor(field_broker)
    snoop = field_broker.client("dev-a")
    assert snoop.connect() == 0
    # Mosquitto 2.0 may grant the subscription; its ACL is checked on each delivery, so what counts is
    # that nothing arrives.
    snoop.subscribe("fleet/+/telemetry")
    snoop.subscribe("#")
    other = field_broker.client("dev-b")
    assert other.connect() == 0
    other.publish(field_topic("dev-b"), b"private")
    wait_for(lambda: sensor.received, timeout_s=10)
    time.sleep(0.3)
    assert snoop.received == []


def test_the_gateway_identity_publishes_for_any_device_but_receives_nothing(field_broker: RunningBroker) -> None:
    sensor = _sensor(field_broker)
    gateway = field_broker.client(GATEWAY_USER)
    assert gateway.connect() == 0
    gateway.subscribe("fleet/+/telemetry")
    for device in ("sim-1", "sim-2"):
        gateway.publish(field_topic(device), device.encode())
    wait_for(lambda: len(sensor.received) == 2, timeout_s=10)
    time.sleep(0.3)
    assert gateway.received == []
    assert sorted(sensor.received) == [(field_topic("sim-1"), b"sim-1"), (field_topic("sim-2"), b"sim-2")]


def test_the_sensor_identity_cannot_publish_readings(field_broker: RunningBroker) -> None:
    # One connection per identity (the client id is the username), and MQTT 3.1.1 delivers a client's
    # own publications back to it: the sensor itself would hear what it forged.
    sensor = _sensor(field_broker)
    sensor.publish(field_topic("dev-a"), b"forged-by-sensor")
    device = field_broker.client("dev-b")
    assert device.connect() == 0
    device.publish(field_topic("dev-b"), b"marker")
    wait_for(lambda: sensor.received, timeout_s=10)
    time.sleep(0.3)
    assert sensor.received == [(field_topic("dev-b"), b"marker")]


def test_the_dev_plain_port_is_anonymous_but_the_tls_port_is_not(field_broker: RunningBroker) -> None:
    assert field_broker.plain_port is not None
    plain = Client(field_broker.plain_port, None, None, None)
    assert plain.connect() == 0
    assert field_broker.client(None).connect() == NOT_AUTHORISED
    assert "INSECURE" in (field_broker.state_dir.parent / "state.log").read_text()


def test_a_device_added_then_sighup_is_let_in_and_a_removed_one_is_not(field_dir: Path, tmp_path: Path) -> None:
    # The broker checks the password file hourly here: only the SIGHUP can have reloaded it.
    process, port = start_field_broker(field_dir, tmp_path / "state", reload_check_s=3600)
    try:
        wait_until_listening(process, port)
        ca = field_dir / "ca.pem"
        password = add_device(field_dir, "dev-new")
        assert Client(port, "dev-new", password, ca).connect() == NOT_AUTHORISED
        process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: Client(port, "dev-new", password, ca).connect() == 0, timeout_s=10)
        assert cli_main(["field", "remove-device", "dev-new", "--dir", str(field_dir)]) == 0
        process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: Client(port, "dev-new", password, ca).connect() == NOT_AUTHORISED, timeout_s=10)
    finally:
        stop(process)
    assert process.returncode == 0


def test_the_broker_notices_a_device_added_to_the_password_file_without_a_signal(field_broker: RunningBroker) -> None:
    password = add_device(field_broker.config_dir, "dev-late")
    late = wait_for(
        lambda: Client(field_broker.port, "dev-late", password, field_broker.ca_file).connect() == 0, timeout_s=10
    )
    assert late


def test_secret_files_are_0600_and_their_directories_0700(field_broker: RunningBroker) -> None:
    field_dir = field_broker.config_dir
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    for directory in (field_dir, field_dir / "clients", field_dir.with_name("field-ca"), field_broker.state_dir):
        assert mode(directory) == 0o700, directory
    secrets = [field_dir / "server-key.pem", field_dir / "passwords", *(field_dir / "clients").iterdir()]
    secrets += [field_broker.state_dir / "acl", field_broker.state_dir / "mosquitto.conf"]
    for path in secrets:
        assert mode(path) == 0o600, path
    assert not (field_dir / "ca.key").exists() and not list(field_dir.rglob("*.key"))  # the CA key stays out


def _run_broker(config_dir: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "field_broker", "--config-dir", str(config_dir), "--state-dir", str(state_dir)]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)


def test_a_missing_config_directory_exits_2_saying_how_to_make_it(tmp_path: Path) -> None:
    run = _run_broker(tmp_path / "nowhere", tmp_path / "state")
    assert run.returncode == 2
    assert f"{tmp_path / 'nowhere' / 'passwords'} is missing" in run.stderr
    assert "edgefleet field init --dir" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_password_file_others_can_read_exits_2_saying_to_chmod_it(field_dir: Path, tmp_path: Path) -> None:
    (field_dir / "passwords").chmod(0o644)
    run = _run_broker(field_dir, tmp_path / "state")
    assert run.returncode == 2
    assert f"chmod 600 {field_dir / 'passwords'}" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_key_the_broker_cannot_read_exits_2_naming_it(field_dir: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file; the mode check cannot be exercised")
    (field_dir / "server-key.pem").chmod(0o000)
    run = _run_broker(field_dir, tmp_path / "state")
    assert run.returncode == 2
    assert f"{field_dir / 'server-key.pem'} cannot be read" in run.stderr
    assert "Traceback" not in run.stderr


def test_the_field_broker_saves_as_often_as_the_reference_field_conf_and_the_stand_ins_brokers() -> None:
    field_conf = (REPO / "deployment" / "mosquitto" / "field.conf").read_text().splitlines()
    assert f"autosave_interval {AUTOSAVE_INTERVAL}" in field_conf
    assert AUTOSAVE.interval == AUTOSAVE_INTERVAL and AUTOSAVE.on_changes


def test_init_again_keeps_every_identity_and_password(tmp_path: Path) -> None:
    field_dir = init_field_dir(tmp_path / "field").path
    password = add_device(field_dir, "dev-a")
    before = (field_dir / "passwords").read_text()
    init_field_dir(field_dir, ["broker.example.com"])  # a new name: a new server certificate, same identities
    assert (field_dir / "passwords").read_text() == before
    assert password


def test_a_kill_9_while_the_sensor_is_away_loses_none_of_the_readings_the_broker_acknowledged(
    field_broker: RunningBroker,
) -> None:
    # The sensor's persistent session (its client id is its username) queues while it is away.
    sensor = field_broker.client(SENSOR_USER, clean_session=False)
    assert sensor.connect() == 0
    assert sensor.subscribe("fleet/+/telemetry") == (1,)
    sensor.close()
    device = field_broker.client("dev-a")
    assert device.connect() == 0
    sent = [f"reading-{seq}".encode() for seq in range(READINGS_BEFORE_THE_KILL)]
    for payload in sent:
        device.publish(field_topic("dev-a"), payload)  # returns once the broker acknowledged it
    device.close()

    mosquitto_pid = int((field_broker.state_dir / "mosquitto.pid").read_text())
    os.kill(mosquitto_pid, signal.SIGKILL)  # the broker itself: no chance to save
    wait_for(lambda: not _alive(mosquitto_pid), timeout_s=10)
    field_broker.process.wait(15)  # python -m field_broker exits when its broker dies; a supervisor restarts it
    again, _ = start_field_broker(
        field_broker.config_dir, field_broker.state_dir, "--insecure-plain-port", str(field_broker.plain_port),
        port=field_broker.port,
    )  # fmt: skip
    try:
        wait_until_listening(again, field_broker.port)
        back = field_broker.client(SENSOR_USER, clean_session=False)
        assert back.connect() == 0
        wait_for(lambda: len(back.received) >= len(sent), timeout_s=15)
        back.close()
    finally:
        stop(again)

    assert {payload for _, payload in back.received} == set(sent)


def test_a_field_broker_killed_with_sigkill_takes_its_mosquitto_along_and_starts_again_on_the_same_port(
    field_dir: Path, tmp_path: Path
) -> None:
    process, port = start_field_broker(field_dir, tmp_path / "state")
    try:
        wait_until_listening(process, port)
        mosquitto_pid = int((tmp_path / "state" / "mosquitto.pid").read_text())
        process.kill()  # SIGKILL: no chance to stop its child
        process.wait(5)
        # Left running, Mosquitto would hold the port and its queue: it exits with its parent.
        wait_for(lambda: not _alive(mosquitto_pid), timeout_s=10)
    finally:
        stop(process)
    again, _ = start_field_broker(field_dir, tmp_path / "state", port=port)
    try:
        wait_until_listening(again, port)
        assert again.poll() is None
    finally:
        stop(again)


def _alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def test_each_listener_of_the_field_broker_journals_to_a_file_of_its_own(tmp_path: Path) -> None:
    # per_listener_settings: one plugin instance per listener; two sharing a journal would replay it twice.
    conf = render_config(
        files=ConfigFiles(tmp_path / "s.pem", tmp_path / "k.pem", tmp_path / "passwords"),
        acl_file=tmp_path / "acl", state_dir=tmp_path, port=8883, bind="127.0.0.1", insecure_plain_port=1883,
        journal_plugin=tmp_path / "edgefleet_journal.so",
    )  # fmt: skip
    journals = [line.split()[1] for line in conf.splitlines() if line.startswith("plugin_opt_journal ")]

    assert journals == [str(tmp_path / "field-broker.8883.journal"), str(tmp_path / "field-broker.1883.journal")]
    assert conf.count(f"plugin_opt_snapshot {tmp_path / PERSISTENCE_FILE}") == 2
