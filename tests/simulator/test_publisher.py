"""Flow control and connection handling: a full queue waits, a lost broker is waited for, nothing is dropped."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet_cli.local_edge import free_port
from edgehub.broker import Broker, Listener, find_mosquitto
from edgehub.certs import ensure_certs
from simulator.errors import SimulatorError
from simulator.report import SimulationReport
from simulator.run import run_simulation
from tests.simulator.conftest import Subscriber, profile, wait_for


def test_a_full_paho_queue_makes_the_simulator_wait_instead_of_dropping(broker: Broker, subscriber: Subscriber):
    port = broker.listeners[0].port
    fleet = profile(duration_s=5.0, mqtt={"port": port, "max_queued_messages": 5, "max_inflight_messages": 2})
    report = run_simulation(fleet, threading.Event())
    assert report.delivery["queue_full_waits"] > 0
    assert report.delivery["acknowledged"] == report.totals["messages"] == 1000
    wait_for(lambda: subscriber.count() >= 1000)
    assert len(subscriber.keys()) == 1000


def test_readings_published_while_the_broker_is_down_arrive_after_it_restarts(tmp_path: Path):
    port = free_port()
    broker = Broker(tmp_path, "field", [Listener("127.0.0.1", port)], persistent=True).start()
    # A persistent session, as the edge's sensor module keeps: the broker queues for it across a restart.
    sub = Subscriber(port, client_id="test-persistent-sub", clean_session=False)
    fleet = profile(speed=1.0, duration_s=3.0, mqtt={"port": port, "drain_timeout_s": 20})
    result: dict[str, SimulationReport] = {}
    runner = threading.Thread(target=lambda: result.update(report=run_simulation(fleet, threading.Event())))
    try:
        runner.start()
        time.sleep(0.8)
        broker.stop()  # SIGTERM: Mosquitto saves the sessions and their queued messages
        time.sleep(0.8)
        broker.start()
        runner.join(30)
        report = result["report"]
        assert report.delivery["disconnects"] >= 1
        assert report.delivery["unacknowledged"] == 0 and report.totals["messages"] == 600
        wait_for(lambda: len(sub.keys()) >= 600, timeout_s=20)
        assert set(sub.keys()) == {(f"dev-{d:05d}", seq) for d in range(20) for seq in range(30)}
    finally:
        sub.close()
        broker.stop()


def test_an_unreachable_broker_fails_fast_saying_how_to_point_at_one():
    fleet = profile(mqtt={"port": free_port(), "connect_timeout_s": 0.5})
    started = time.monotonic()
    with pytest.raises(
        SimulatorError, match=r"cannot connect to the MQTT broker at mqtt://127.0.0.1:\d+ .*--host/--port"
    ):
        run_simulation(fleet, threading.Event())
    assert time.monotonic() - started < 5.0


def test_tls_with_the_brokers_ca_file_publishes_and_is_acknowledged(tmp_path: Path):
    certs = ensure_certs(tmp_path / "certs", ["127.0.0.1"])
    port = free_port()
    with Broker(tmp_path, "tls", [Listener("127.0.0.1", port, certs)]):
        fleet = profile(mqtt={"port": port, "tls_ca_file": str(certs.ca_cert)})
        report = run_simulation(fleet, threading.Event())
    assert report.mqtt["tls"] and report.delivery["acknowledged"] == report.totals["messages"] == 400


def test_a_run_stopped_before_the_broker_answers_returns_at_once_with_nothing_sent():
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    fleet = profile(mqtt={"port": free_port(), "connect_timeout_s": 30})
    started = time.monotonic()
    report = run_simulation(fleet, stop)
    assert time.monotonic() - started < 3.0
    assert report.stopped_early and report.sent == 0 and report.delivery["published"] == 0


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[int]:
    """Start a Mosquitto that only lets user `gateway` with password `s3cret` in; yield its port."""
    port = free_port()
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gateway", "s3cret"], check=True)
    config = tmp_path / "mosquitto.conf"
    user = f"user {getpass.getuser()}\n" if os.geteuid() == 0 else ""  # root would switch to `mosquitto`
    config.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n")
    process = subprocess.Popen([find_mosquitto(), "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _accepts(port), timeout_s=10)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def test_a_username_and_password_get_in_and_a_wrong_password_is_refused_at_once(password_broker: int):
    fleet = profile(mqtt={"port": password_broker, "username": "gateway", "password": "s3cret"})
    report = run_simulation(fleet, threading.Event())
    assert report.delivery["acknowledged"] == report.totals["messages"] == 400
    wrong = profile(mqtt={"port": password_broker, "username": "gateway", "password": "nope"})
    started = time.monotonic()
    with pytest.raises(
        SimulatorError, match=r"refused the connection: .*not authori[sz]ed; check mqtt.username"
    ) as caught:
        run_simulation(wrong, threading.Event())
    assert time.monotonic() - started < 5.0 and "nope" not in str(caught.value)
