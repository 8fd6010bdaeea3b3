"""benchmarks/edge/phases.py: when predictions were made; on a real edge, a reading waits for a stopped module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.edge.harness import running_edge
from benchmarks.edge.phases import last_prediction_s, queue_for_stopped_inference
from edgefleet.bundle import read_manifest
from edgefleet.deployment import Deployment
from tests.edge_fixtures import next_ip_base


def test_a_reading_for_the_stopped_inference_module_waits_at_the_stand_in_until_it_is_back(
    tmp_path: Path, deployment: Deployment, small_bundle: Path, bundle_version: str
) -> None:
    device_id = sorted(read_manifest(small_bundle).devices)[0]
    with running_edge(tmp_path / "edge", deployment, small_bundle, bundle_version, next_ip_base(), "bundle") as session:
        arrivals = session.upstream.predictions

        queue_for_stopped_inference(session, device_id)

        assert session.edge.standin.router.held() == {"sensor": 0, "inference": 1, "$upstream": 0}
        assert arrivals.count == 0
        session.edge.start_module("inference", wait=False)
        assert arrivals.wait(1, 60.0), session.edge.standin.router.stats()
        assert arrivals.count == 1


def _body(*items: tuple[str, int, str, float]) -> bytes:
    readings = [
        {"device_id": device, "seq": seq, "edge": {"received_ts": received, "latency_ms": latency_ms}}
        for device, seq, received, latency_ms in items
    ]
    return json.dumps({"readings": readings}).encode()


@pytest.mark.fast
def test_the_last_prediction_made_is_its_sensor_stamp_plus_its_edge_latency_whatever_batch_arrived_last():
    early = _body(("a", 1, "2026-12-07T10:00:00.000Z", 900.0))  # made last, sent first
    late = _body(("b", 1, "2026-12-07T10:00:00.500Z", 100.0), ("b", 2, "2026-12-07T10:00:00.600Z", 50.0))
    made_s = last_prediction_s([(100.0, early), (101.0, late)])
    assert made_s == pytest.approx(1796637600.9)
    assert last_prediction_s([]) is None
