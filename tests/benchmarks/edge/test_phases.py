"""benchmarks/edge/phases.py on a real edge: a reading waits at the stand-in for a stopped inference module."""

from __future__ import annotations

from pathlib import Path

from benchmarks.edge.harness import running_edge
from benchmarks.edge.phases import queue_for_stopped_inference
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
