"""The edge under chaos: kill -9 its processes at random under QoS 1 load, and no reading is lost.

The harness (`benchmarks/edge/chaos.py`, CLI `benchmarks/chaos.py`) runs the edge as plain
processes, kills one of them (or a broker its parent runs) at a time on a seeded schedule, lets
the supervisor and the parents bring it back, and accounts for every reading sent. The seed is
printed; `EDGEFLEET_CHAOS_SEED=N` reproduces a run's schedule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.edge.chaos import ChaosConfig, ChaosReport, Kill, attribute, run_chaos, seed_from_env

KILLS = 20


def test_twenty_random_kill_9s_of_edge_processes_lose_no_reading(tmp_path: Path, small_bundle: Path) -> None:
    config = ChaosConfig(kills=KILLS, seed=seed_from_env(1))

    report = run_chaos(tmp_path / "edge", small_bundle, config)

    table = report.markdown()
    print(f"\n{table}")  # the figures README's reliability section quotes
    assert len(report.kills) >= KILLS, table
    assert report.lost == 0, table


@pytest.mark.fast
def test_a_lost_reading_is_blamed_on_the_outage_it_was_sent_in_else_on_the_next_kill() -> None:
    kills = [Kill(1, "sensor", 100, at_s=5.0, back_after_s=2.0), Kill(2, "sink", 200, at_s=9.0, back_after_s=1.0)]
    # 4.0: before kill 1; 6.0: during kill 1's outage; 8.9: between the two; 9.5: during kill 2's; 12.0: after both.
    sent_at = {("dev-1", 1): 4.0, ("dev-1", 2): 6.0, ("dev-1", 3): 8.9, ("dev-1", 4): 9.5, ("dev-1", 5): 12.0}

    after_last = attribute(kills, list(sent_at), sent_at, "lost")

    assert [kill.lost for kill in kills] == [2, 2]
    assert after_last == 1
    report = ChaosReport(
        config=ChaosConfig(kills=2, seed=5), kills=kills, sent=4, predicted=0, deadlettered=0,
        deadletter_reasons={}, lost=4, lost_after_last_kill=1, duplicate_predictions=0, duplicate_raw=0,
        unacked_by_field_broker=0, wall_s=1.0, findings=[], lost_examples=[],
    )  # fmt: skip
    assert "| sink | 1 | 2 | 0 | 0 |" in report.markdown()
    assert "EDGEFLEET_CHAOS_SEED=5" in report.markdown()
