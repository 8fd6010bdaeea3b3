"""A broker that dies comes back on its own; one stopped on purpose stays down; one that cannot start backs off."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from edgefleet_cli.local_edge import free_port
from edgehub.broker import Broker, BrokerKeeper, Listener

from .conftest import wait_for


def _accepts(listener: Listener) -> bool:
    try:
        socket.create_connection((listener.host, listener.port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_a_broker_killed_with_sigkill_listens_again_within_a_second_or_two(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Broker(tmp_path, "field", [Listener("127.0.0.1", free_port())], persistent=True).start()
    keeper = BrokerKeeper([broker]).start()
    try:
        old_pid = broker.pid
        assert old_pid is not None
        with caplog.at_level(logging.WARNING, logger="edgehub.broker"):
            os.kill(old_pid, signal.SIGKILL)
            wait_for(lambda: broker.pid not in (None, old_pid) and _accepts(broker.listeners[0]), timeout_s=10)
        assert keeper.restarts() == {"field": 1}
        assert keeper.problems() == []
        assert "mosquitto 'field' exited with signal SIGKILL; restarting it now" in caplog.text
        assert "Restarted mosquitto 'field' (restart 1)" in caplog.text
    finally:
        keeper.stop()
        broker.stop()


def test_a_broker_stopped_or_killed_on_purpose_stays_down(tmp_path: Path) -> None:
    stopped = Broker(tmp_path, "stopped", [Listener("127.0.0.1", free_port())]).start()
    killed = Broker(tmp_path, "killed", [Listener("127.0.0.1", free_port())]).start()
    keeper = BrokerKeeper([stopped, killed], interval_s=0.05).start()
    try:
        stopped.stop()
        killed.kill()
        time.sleep(1.0)  # five rounds of the keeper
        assert not stopped.running() and not killed.running()
        assert keeper.restarts() == {"stopped": 0, "killed": 0}
    finally:
        keeper.stop()
        stopped.stop()
        killed.stop()


def test_a_broker_that_cannot_start_again_is_reported_and_tried_later_with_a_growing_pause(tmp_path: Path) -> None:
    listener = Listener("127.0.0.1", free_port())
    broker = Broker(tmp_path, "hub", [listener], start_timeout_s=5).start()
    keeper = BrokerKeeper([broker])  # checked by hand: the clock is the test's
    try:
        os.kill(broker.pid or 0, signal.SIGKILL)
        wait_for(lambda: not broker.running())
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((listener.host, listener.port))
            squatter.listen()
            keeper.check(1000.0)  # first death: tried at once, and fails on the taken port
            assert not broker.running()
            (problem,) = keeper.problems()
            assert "mosquitto 'hub' could not be restarted" in problem and "in use" in problem
            keeper.check(1000.1)  # the second failure in a row waits before the next try
            assert keeper.restarts() == {"hub": 0}
        keeper.check(1000.2)
        assert not broker.running()
        keeper.check(1000.0 + keeper.delay_s(2) + 0.1)
        assert broker.running() and _accepts(listener)
        assert keeper.restarts() == {"hub": 1} and keeper.problems() == []
    finally:
        broker.stop()


@pytest.mark.fast
def test_the_pause_before_a_restart_is_none_for_a_first_death_then_doubles_up_to_its_cap() -> None:
    keeper = BrokerKeeper([], backoff_initial_s=0.5, backoff_max_s=4.0)
    assert [keeper.delay_s(n) for n in range(1, 7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert keeper.delay_s(10_000) == 4.0
