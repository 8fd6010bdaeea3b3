"""A module survives losing its edgeHub session: broker crashes, a clean-session take-over, a broker that stays down.

Real processes: the stand-in's per-module Mosquitto, the router, the modules under `python -m`.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from edgefleet.bundle import read_manifest
from edgefleet_cli.local_edge import LocalEdge
from edgehub.broker import Broker
from modules.inference.service import DRAIN_TIMEOUT_S
from tests.edge_fixtures import lake_rows, module_mqtt_client, reading, wait_for

RECOVERY_S = 20.0  # the SDK retries every 2 s; re-subscribing and re-reading the twin take well under a second


def _trained_device(small_bundle: Path) -> str:
    manifest = read_manifest(small_bundle)
    return sorted(d for d, e in manifest.devices.items() if e.kind == "device")[0]


def _module_broker(edge: LocalEdge, module: str) -> Broker:
    return edge.standin._brokers[edge.standin.modules.index(module)]


def _inference_broker(edge: LocalEdge) -> Broker:
    return _module_broker(edge, "inference")


def _kill_9(broker: Broker) -> None:
    pid = broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # The stand-in's broker keeper may have started it again before we look: a new pid counts too.
    wait_for(lambda: not broker.running() or broker.pid != pid, timeout_s=5)


def _predicted_seqs(edge: LocalEdge, device: str) -> set[int]:
    rows = lake_rows(edge)
    rows = rows[(rows["source_module"] == "inference") & (rows["device_id"] == device)]
    return set(rows["seq"].astype(int))


def _answers_stats(edge: LocalEdge) -> bool:
    try:
        return edge.method("inference", "stats", timeout_s=2.0)[0] == 200
    except Exception:  # not back yet: the router times out or its link is down
        return False


def _assert_predicts(edge: LocalEdge, publisher, device: str, seqs: range) -> None:
    for seq in seqs:
        publisher.publish(reading(device, seq))
    publisher.wait_acked(timeout_s=30)
    wait_for(lambda: set(seqs) <= _predicted_seqs(edge, device), timeout_s=30, interval_s=0.5)


def test_the_inference_module_hears_again_after_its_edgehub_broker_is_killed_and_restarted(
    start_edge, publisher_factory, small_bundle
):
    device = _trained_device(small_bundle)
    edge = start_edge()
    publisher = publisher_factory(edge)
    _assert_predicts(edge, publisher, device, range(0, 20))
    broker = _inference_broker(edge)

    _kill_9(broker)
    time.sleep(1.0)
    broker.start()

    wait_for(lambda: _answers_stats(edge), timeout_s=RECOVERY_S, interval_s=0.5)
    _assert_predicts(edge, publisher, device, range(100, 140))
    # Its twin reports are answered again (a report waits for edgeHub's response on a subscribed topic).
    version = edge.standin.router.twin("inference")["reported"]["$version"]
    wait_for(lambda: edge.standin.router.twin("inference")["reported"]["$version"] > version + 2, timeout_s=10)
    assert edge.standin.router.twin("inference")["reported"]["counters"]["predictions"] > 0


def test_the_inference_module_hears_again_after_a_client_with_its_id_wipes_its_session(
    start_edge, publisher_factory, small_bundle
):
    device = _trained_device(small_bundle)
    edge = start_edge()
    publisher = publisher_factory(edge)
    _assert_predicts(edge, publisher, device, range(0, 20))

    # A local tool with the module's key and client id, connecting with a clean session: the broker
    # drops the module's connection and its persistent session (with every subscription) for good.
    rogue = module_mqtt_client(edge.standin.module_identity("inference"), edge.standin.ca_file)
    rogue.connect(edge.standin.module_host("inference"), 8883)
    rogue.loop_start()
    time.sleep(0.5)
    rogue.disconnect()
    rogue.loop_stop()

    wait_for(lambda: _answers_stats(edge), timeout_s=RECOVERY_S, interval_s=0.5)
    _assert_predicts(edge, publisher, device, range(100, 140))


@pytest.mark.parametrize(
    ("module", "lost"),
    [("inference", "edgehub"), ("sensor", "edgehub"), ("sensor", "field")],
)
def test_a_module_whose_broker_stays_down_stops_touching_its_health_file(start_edge, tmp_path, module, lost):
    health = tmp_path / f"{module}.health"
    # The supervisor would restart the module this test leaves unhealthy on purpose.
    edge = start_edge(module_env={module: {"HEALTH_FILE": str(health)}}, supervise=False)
    wait_for(lambda: health.exists() and time.time() - health.stat().st_mtime < 1.5, timeout_s=10)
    broker = _module_broker(edge, module) if lost == "edgehub" else edge.field_broker

    if lost == "edgehub":
        broker.kill()  # SIGKILL through the Broker: down on purpose, the stand-in's keeper leaves it down
    else:
        broker.stop()
    time.sleep(0.5)  # a report already under way may still touch it once
    touched_s = health.stat().st_mtime
    time.sleep(3 * 0.5 + 1.0)  # three report intervals, and some slack
    assert health.stat().st_mtime == touched_s

    broker.start()
    wait_for(lambda: health.stat().st_mtime > touched_s, timeout_s=RECOVERY_S, interval_s=0.2)


def test_sigterm_stops_the_inference_module_within_its_drain_timeout_while_edgehub_is_down(
    start_edge, publisher_factory, small_bundle
):
    device = _trained_device(small_bundle)
    edge = start_edge()
    publisher = publisher_factory(edge)
    _assert_predicts(edge, publisher, device, range(0, 10))
    _inference_broker(edge).kill()  # stays down: the stand-in's keeper restarts only brokers that died
    time.sleep(0.5)

    started = time.monotonic()
    assert edge.processes["inference"].stop(timeout_s=DRAIN_TIMEOUT_S + 10) == 0
    assert time.monotonic() - started < DRAIN_TIMEOUT_S
