"""Restarts mid-stream lose nothing: counted by device_id + seq in the lake."""

from __future__ import annotations

import threading
import time

from edgefleet.bundle import read_manifest
from tests.edge_fixtures import lake_rows, reading, wait_for

READINGS = 3000
RATE_PER_S = 600.0


def _stream(publisher, devices: list[str]) -> threading.Thread:
    payloads = [reading(devices[i % len(devices)], i // len(devices)) for i in range(READINGS)]
    thread = threading.Thread(target=publisher.publish_all, args=(payloads, RATE_PER_S), daemon=True)
    thread.start()
    return thread


def _all_predicted(edge, devices: list[str]) -> set[tuple[str, int]]:
    expected = {(devices[i % len(devices)], i // len(devices)) for i in range(READINGS)}

    def check():
        rows = lake_rows(edge)
        rows = rows[rows["source_module"] == "inference"]
        seen = set(zip(rows["device_id"], rows["seq"].astype(int), strict=True))
        return seen if expected <= seen else None

    try:
        return wait_for(check, timeout_s=90, interval_s=0.5)
    finally:
        rows = lake_rows(edge)
        rows = rows[rows["source_module"] == "inference"]
        seen = set(zip(rows["device_id"], rows["seq"].astype(int), strict=True))
        missing = sorted(expected - seen)
        assert not missing, f"{len(missing)} readings never reached the lake, e.g. {missing[:5]}"


def _devices(small_bundle) -> list[str]:
    manifest = read_manifest(small_bundle)
    return [*sorted(d for d, e in manifest.devices.items() if e.status == "trained"), "never-seen-device"]


def test_restarting_the_field_broker_mid_stream_loses_no_reading(start_edge, publisher_factory, small_bundle):
    devices = _devices(small_bundle)
    edge = start_edge()
    publisher = publisher_factory(edge)
    thread = _stream(publisher, devices)
    time.sleep(READINGS / RATE_PER_S / 3)
    edge.field_broker.stop()
    time.sleep(1.0)
    edge.field_broker.start()
    thread.join()
    publisher.wait_acked(timeout_s=90)
    _all_predicted(edge, devices)
    stats = edge.method("sensor", "stats")[1]
    assert stats["field_connected"]


def test_restarting_the_inference_module_mid_stream_loses_no_reading(start_edge, publisher_factory, small_bundle):
    devices = _devices(small_bundle)
    edge = start_edge()
    publisher = publisher_factory(edge)
    thread = _stream(publisher, devices)
    time.sleep(READINGS / RATE_PER_S / 3)
    assert edge.processes["inference"].stop() == 0  # SIGTERM: finish in-flight, then exit cleanly
    time.sleep(0.5)
    edge.start_module("inference")
    thread.join()
    publisher.wait_acked(timeout_s=90)
    _all_predicted(edge, devices)


def test_restarting_the_edgehub_broker_of_the_inference_module_loses_no_reading(
    start_edge, publisher_factory, small_bundle
):
    devices = _devices(small_bundle)
    edge = start_edge()
    publisher = publisher_factory(edge)
    thread = _stream(publisher, devices)
    time.sleep(READINGS / RATE_PER_S / 3)
    broker = edge.standin._brokers[edge.standin.modules.index("inference")]
    broker.stop()
    time.sleep(1.0)
    broker.start()
    thread.join()
    publisher.wait_acked(timeout_s=90)
    _all_predicted(edge, devices)
