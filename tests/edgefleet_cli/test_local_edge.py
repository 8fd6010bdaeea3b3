"""The local edge's helpers that need no processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgefleet_cli.local_edge import replay_module_env

pytestmark = pytest.mark.fast

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def test_a_simulation_replaying_the_past_widens_the_sensors_window_to_reach_its_start():
    env = replay_module_env(datetime(2026, 11, 1, tzinfo=UTC), now=NOW)
    age_s = int(env["sensor"]["MAX_READING_AGE_S"])
    assert age_s == int((timedelta(days=35) + timedelta(days=7)).total_seconds())


@pytest.mark.parametrize("start", ["now", NOW - timedelta(hours=1), NOW + timedelta(days=1)])
def test_a_simulation_starting_now_or_recently_leaves_the_sensors_window_alone(start):
    assert replay_module_env(start, now=NOW) == {}
