"""The local edge restarts module processes that die or go deaf, as edgeAgent's restartPolicy does."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from edgefleet.bundle import read_manifest
from edgefleet_cli.supervisor import Backoff, Phase
from tests.edge_fixtures import lake_rows, reading, wait_for

BACKOFF = Backoff(initial_s=1.0, max_s=5.0)


def _restarted(edge, module: str, restarts: int):
    """Return the module's status once it runs again after `restarts` restarts."""
    status = edge.module_statuses()[module]
    return status if status.phase is Phase.RUNNING and status.restarts == restarts else None


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_a_killed_inference_module_is_restarted_within_its_backoff_and_predicts_what_is_sent_afterwards(
    start_edge, publisher_factory, small_bundle, caplog
):
    caplog.set_level(logging.WARNING, logger="edgefleet_cli.supervisor")
    edge = start_edge(restart_backoff=BACKOFF)
    old = edge.processes["inference"]
    os.kill(old.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    status = wait_for(lambda: _restarted(edge, "inference", 1), timeout_s=10)
    assert time.monotonic() - killed_at < BACKOFF.initial_s + 3.0
    assert edge.processes["inference"] is not old and edge.processes["inference"].running()
    assert status.last_exit == -signal.SIGKILL
    assert "signal SIGKILL" in caplog.text and "restart 1" in caplog.text

    edge.wait_module_ready("inference")
    device = next(d for d, e in read_manifest(small_bundle).devices.items() if e.kind == "device")
    publisher = publisher_factory(edge)
    publisher.publish_all(reading(device, seq) for seq in range(1, 21))
    publisher.wait_acked()

    def predicted() -> set[int] | None:
        rows = lake_rows(edge)
        seqs = set(rows[rows["source_module"] == "inference"]["seq"].astype(int))
        return seqs if seqs >= set(range(1, 21)) else None

    wait_for(predicted, timeout_s=30, interval_s=0.5)
    assert edge.module_statuses()["inference"].restarts == 1


def test_a_sensor_that_stops_touching_its_health_file_is_stopped_and_restarted(start_edge, caplog):
    caplog.set_level(logging.WARNING, logger="edgefleet_cli.supervisor")
    edge = start_edge(restart_backoff=BACKOFF, unhealthy_after_s=2.0)
    old = edge.processes["sensor"]
    assert old.health_path is not None
    wait_for(old.health_path.exists, timeout_s=10)
    os.kill(old.process.pid, signal.SIGSTOP)  # deaf: alive, but it no longer reports or touches its file

    wait_for(lambda: edge.module_statuses()["sensor"].phase is Phase.UNHEALTHY, timeout_s=10)
    wait_for(lambda: _restarted(edge, "sensor", 1), timeout_s=30)
    assert _gone(old.process.pid)
    assert "Module sensor is unhealthy" in caplog.text
    edge.wait_module_ready("sensor")
    assert edge.module_statuses()["inference"].restarts == 0


def test_a_module_stopped_on_purpose_is_left_down_and_one_started_again_is_watched(start_edge):
    edge = start_edge(restart_backoff=BACKOFF)
    assert edge.processes["inference"].stop() == 0
    time.sleep(BACKOFF.initial_s + 1.0)
    assert edge.module_statuses()["inference"].phase is Phase.STOPPED
    assert not edge.processes["inference"].running()

    edge.start_module("inference")
    os.kill(edge.processes["inference"].process.pid, signal.SIGKILL)
    wait_for(lambda: _restarted(edge, "inference", 1), timeout_s=10)
