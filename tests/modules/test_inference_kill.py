"""A kill -9 of the inference module loses no reading it acknowledged: its journal answers them after the restart.

Real processes: the field Mosquitto, the stand-in (module brokers, router, lake sink), the sensor
and inference modules under `python -m`, the real azure-iot-device SDK.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from edgefleet.bundle import read_manifest
from edgefleet.journal import SUFFIX
from modules.inference.inbox import JOURNAL_DIR
from tests.edge_fixtures import lake_rows, reading, wait_for

logger = logging.getLogger(__name__)

READINGS = 4000
RATE_PER_S = 1000.0
BACKLOG_S = 1.5  # how long edgeHub holds the module's messages back, to release them as one burst
BURST_S = 0.1  # how long the burst flows before edgeHub freezes again
ANSWERING_S = 0.5  # then the module answers what it took; edgeHub acknowledges none of it


def _devices(small_bundle) -> list[str]:
    manifest = read_manifest(small_bundle)
    return [*sorted(d for d, e in manifest.devices.items() if e.status == "trained"), "never-seen-device"]


def _inference_rows(edge):
    rows = lake_rows(edge)
    return rows[rows["source_module"] == "inference"]


def test_a_kill_9_of_inference_during_a_burst_loses_no_reading_it_acknowledged(
    start_edge, publisher_factory, small_bundle
):
    devices = _devices(small_bundle)
    expected = {(devices[i % len(devices)], i // len(devices)) for i in range(READINGS)}
    edge = start_edge(supervise=False)  # this test restarts the module itself
    journal = edge.workdir / "inference-state" / JOURNAL_DIR
    publisher = publisher_factory(edge)
    payloads = [reading(devices[i % len(devices)], i // len(devices)) for i in range(READINGS)]
    stream = threading.Thread(target=publisher.publish_all, args=(payloads, RATE_PER_S), daemon=True)
    stream.start()
    wait_for(lambda: len(_inference_rows(edge)) > 200, timeout_s=30, interval_s=0.2)

    # edgeHub stops serving the module (its broker frozen): the stream piles up upstream of it. Thawed
    # for a moment, the pile arrives as a burst the module acknowledges faster than it answers; frozen
    # again, none of the answers still in the module can be acknowledged when it is killed.
    broker = edge.standin._brokers[edge.standin.modules.index("inference")]
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        time.sleep(BACKLOG_S)
        os.kill(broker.pid, signal.SIGCONT)
        time.sleep(BURST_S)
        os.kill(broker.pid, signal.SIGSTOP)
        time.sleep(ANSWERING_S)
        inference = edge.processes["inference"]
        inference.kill()
        assert inference.process is not None
        inference.process.wait(10)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    left = sorted(journal.glob(f"*{SUFFIX}"))
    logger.info("The kill left %d journal segment(s) (%d bytes)", len(left), sum(p.stat().st_size for p in left))
    assert left, "the kill found every reading answered: this test did not catch the module with work in hand"

    edge.start_module("inference")
    stream.join()
    publisher.wait_acked(timeout_s=90)

    def all_predicted() -> bool:
        rows = _inference_rows(edge)  # read once: the lake grows between two reads
        seen = set(zip(rows["device_id"], rows["seq"], strict=True))
        return expected <= {(device, int(seq)) for device, seq in seen}

    try:
        wait_for(all_predicted, timeout_s=90, interval_s=0.5)
    finally:
        rows = _inference_rows(edge)
        seen = {(device, int(seq)) for device, seq in zip(rows["device_id"], rows["seq"], strict=True)}
        missing = sorted(expected - seen)
        duplicates = len(rows) - len(seen)
        logger.info("Lost %d reading(s); %d duplicate prediction row(s) in the lake", len(missing), duplicates)
        print(f"\nkill -9 during a burst: lost {len(missing)}, duplicates {duplicates}, segments left {len(left)}")
        assert not missing, f"{len(missing)} acknowledged readings never reached the lake, e.g. {missing[:5]}"
