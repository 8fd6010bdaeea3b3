"""The edge with the simulator, all real processes: every sent reading is accounted for."""

from __future__ import annotations

import threading

from edgefleet.lake import read_deadletters, read_lake
from edgefleet_cli.edge_report import account
from edgefleet_cli.local_edge import replay_module_env
from edgefleet_cli.up import run_up
from simulator.profile import parse_profile
from simulator.run import run_simulation


def _profile(seed: int = 3) -> object:
    return parse_profile(
        {
            "seed": seed,
            "duration_s": 6,
            "speed": 1.0,
            "device_types": [
                {"name": "pump", "count": 30, "id_prefix": "dev-", "rate_per_s": 10.0},
            ],
            "faults": {
                "nan_rate": 0.02,
                "missing_feature_rate": 0.02,
                "duplicate_rate": 0.02,
                "reorder_rate": 0.02,
                "burst_rate": 0.01,
                "spike_rate": 0.01,
                "stuck_rate": 0.01,
                "silent_device_rate": 0.1,
                "silent_duration_s": 2,
            },
        }
    )


def test_every_simulated_reading_is_predicted_dead_lettered_or_counted_as_a_duplicate(start_edge):
    profile = _profile()
    # The simulation runs on simulated time, dated in the past: let the sensor take its backlog.
    edge = start_edge(module_env=replay_module_env(profile.start_ts))
    progress: dict[str, object] = {}

    def simulation(port: int, stop: threading.Event) -> object:
        return run_simulation(profile, stop, host="127.0.0.1", port=port, on_progress=progress.update)

    result = run_up(edge, threading.Event(), simulation=simulation, simulator_progress=progress, live=False)
    expected = result.simulation.expected_at_edge
    assert expected["sent"] > 1000

    assert edge.lake_sink is not None
    edge.lake_sink.flush()
    lake = read_lake(edge.lake_dir)
    accounting = account(lake, read_deadletters(edge.lake_dir), expected)
    assert accounting["lost"] == 0
    assert accounting["predicted"] == expected["expected_valid"]
    assert accounting["deadletters_by_reason"].get("non_finite", 0) == expected["deadletter_non_finite"]
    sensor = result.last.sensor
    assert sensor["seq_duplicates"] == expected["duplicates"]
    fallbacks = result.last.inference["fallbacks"]
    assert fallbacks.get("missing_features", 0) >= expected["missing_features"]
