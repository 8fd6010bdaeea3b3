"""The demo's edge run, real processes: the simulator logs in over TLS, nothing is lost, CPU is counted."""

from __future__ import annotations

from pathlib import Path

from edgefleet_cli.demo import _demo_profile, _run_edge
from tests.edge_fixtures import next_ip_base


def test_the_demos_simulator_publishes_over_tls_to_the_secure_field_broker_and_its_readings_reach_the_lake(
    small_bundle: Path, tmp_path: Path
) -> None:
    profile = _demo_profile(seed=7, edge_seconds=4, devices=10, rate_per_s=2.0)

    run = _run_edge(tmp_path / "demo-edge", small_bundle, profile, next_ip_base())

    assert run.simulation["mqtt"]["tls"] is True
    assert run.simulation["delivery"]["unsent"] == 0
    sent = run.simulation["totals"]["sent"]
    assert sent > 0
    # Predictions carry every reading (features, label): the raw telemetry route is off by default.
    assert len(run.rows[run.rows["source_module"] == "inference"]) > 0
    assert set(run.rows["source_module"]) == {"inference"}
    assert (tmp_path / "demo-edge" / "field-secrets" / "ca.pem").is_file()
    # The sensor, the inference module and the brokers each did work while the simulator ran.
    assert set(run.cpu_s) == {"sensor", "inference", "brokers"}
    assert all(used > 0 for used in run.cpu_s.values()), run.cpu_s
