"""Running Mosquitto: configuration, readiness and clear failures."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edgehub import broker as broker_module
from edgehub.broker import Broker, BrokerError, Listener, find_mosquitto, render_config
from edgehub.certs import ensure_certs


def test_the_config_queues_without_loss_and_names_every_listener(tmp_path: Path) -> None:
    certs = ensure_certs(tmp_path, ["127.0.5.10"])

    text = render_config([Listener("127.0.5.10", 8883, certs), Listener("127.0.5.1", 1884)])

    assert "max_queued_messages 5000000" in text
    assert "listener 8883 127.0.5.10" in text and f"certfile {certs.server_cert}" in text
    assert "listener 1884 127.0.5.1" in text
    assert "mount_point" not in text


def test_a_missing_mosquitto_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(broker_module, "_EXTRA_DIRS", ())

    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        find_mosquitto()


def test_a_broker_accepts_connections_once_started_and_stops_cleanly(tmp_path: Path) -> None:
    with Broker(tmp_path, "plain", [Listener("127.0.0.1", _free_port())]) as broker:
        listener = broker.listeners[0]
        socket.create_connection((listener.host, listener.port), timeout=2).close()
        pid = broker.pid
    assert pid is not None and not broker.running()


def test_a_busy_port_fails_fast_with_the_broker_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(BrokerError, match="already in use"):
            Broker(tmp_path, "busy", [Listener("127.0.0.1", port)], start_timeout_s=5).start()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_broker_left_over_by_a_crashed_run_is_replaced(tmp_path: Path) -> None:
    listener = Listener("127.0.0.1", _free_port())
    crashed = Broker(tmp_path, "edge", [listener]).start()
    stale_pid = crashed.pid
    crashed._process = None  # the run "crashes": nobody will stop this process

    with Broker(tmp_path, "edge", [listener]) as again:
        assert again.running() and again.pid != stale_pid
    assert stale_pid is not None and not broker_module._alive(stale_pid)
