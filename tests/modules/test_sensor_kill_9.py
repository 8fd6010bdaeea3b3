"""A kill -9 of the sensor loses no reading it acknowledged to the field broker (its journal replays them).

Real processes: the field Mosquitto, the edgeHub stand-in, the modules under `python -m` (the sensor's
rows in the lake are counted).
"""

from __future__ import annotations

import logging
import threading
import time

import pandas as pd

from edgefleet.desired import MAX_BATCH_BYTES
from edgefleet_cli.local_edge import LocalEdge
from tests.edge_fixtures import lake_rows, reading, wait_for

logger = logging.getLogger(__name__)

READINGS = 400
DEVICE = "kill-9-device"
# A window longer than the test: every reading is still in the sensor's open batch when it is killed.
HELD_OPEN = {"batchWindowMs": 60_000, "maxBatchBytes": MAX_BATCH_BYTES}


def _sensor_stats(edge: LocalEdge) -> dict:
    status, stats = edge.method("sensor", "stats")
    assert status == 200 and isinstance(stats, dict)
    return stats


def _sensor_rows(edge: LocalEdge) -> pd.DataFrame:
    rows = lake_rows(edge)
    return rows[(rows["source_module"] == "sensor") & (rows["device_id"] == DEVICE)]


def test_readings_a_killed_sensor_held_in_its_open_batch_reach_the_lake_after_it_restarts(
    start_edge, publisher_factory, record_property, raw_telemetry_deployment
):
    # The opt-in raw route: the lake gets the sensor's own record of every reading.
    edge = start_edge(supervise=False, desired_overrides={"sensor": HELD_OPEN}, deployment=raw_telemetry_deployment)
    publisher = publisher_factory(edge)
    for seq in range(READINGS):
        publisher.publish(reading(DEVICE, seq))
    publisher.wait_acked(timeout_s=30)
    # Every reading handled, so acknowledged to the field broker: it will not deliver them again.
    wait_for(lambda: _sensor_stats(edge).get("forwarded") == READINGS, timeout_s=30, interval_s=0.2)
    held = _sensor_stats(edge)
    assert held["open_batch_readings"] == READINGS

    edge.processes["sensor"].kill()
    wait_for(lambda: not edge.processes["sensor"].running(), timeout_s=10)
    assert _sensor_rows(edge).empty  # nothing had left the sensor

    edge.start_module("sensor")
    edge.standin.router.apply_desired_patch("sensor", {"batchWindowMs": 100})  # send the replayed batch now
    expected = set(range(READINGS))

    def delivered() -> set[int] | None:
        seqs = set(_sensor_rows(edge)["seq"].astype(int))
        return seqs if expected <= seqs else None

    try:
        wait_for(delivered, timeout_s=30, interval_s=0.5)
    finally:
        _assert_none_lost(edge, expected, record_property)
    assert _sensor_stats(edge)["replayed_messages"] == READINGS
    wait_for(lambda: _sensor_stats(edge)["journal"]["segments_pending"] == 0, timeout_s=10, interval_s=0.2)


def test_a_sensor_killed_mid_stream_loses_no_reading_and_only_duplicates_some(
    start_edge, publisher_factory, record_property, raw_telemetry_deployment
):
    # The manifest's batch window (batches open, queued and in flight), plus the opt-in raw route.
    edge = start_edge(supervise=False, deployment=raw_telemetry_deployment)
    publisher = publisher_factory(edge)
    total, rate_per_s = 3000, 600.0
    payloads = [reading(DEVICE, seq) for seq in range(total)]
    stream = threading.Thread(target=publisher.publish_all, args=(payloads, rate_per_s), daemon=True)
    stream.start()
    time.sleep(total / rate_per_s / 3)
    edge.processes["sensor"].kill()
    wait_for(lambda: not edge.processes["sensor"].running(), timeout_s=10)
    edge.start_module("sensor")  # the field broker kept what arrived meanwhile (persistent session)
    stream.join()
    publisher.wait_acked(timeout_s=60)
    expected = set(range(total))
    try:
        wait_for(lambda: expected <= set(_sensor_rows(edge)["seq"].astype(int)), timeout_s=60, interval_s=0.5)
    finally:
        _assert_none_lost(edge, expected, record_property)


def _assert_none_lost(edge: LocalEdge, expected: set[int], record_property) -> None:
    rows = _sensor_rows(edge)
    missing = sorted(expected - set(rows["seq"].astype(int)))
    duplicates = len(rows) - rows["seq"].nunique()
    record_property("duplicates", duplicates)
    logger.info("kill -9 of the sensor: %d lost, %d duplicate row(s)", len(missing), duplicates)
    assert not missing, f"{len(missing)} of {len(expected)} acknowledged readings were lost, e.g. {missing[:5]}"
