"""A module gives up only after staying unhealthy, without a break, for its whole limit."""

from __future__ import annotations

from modules.runtime import UNHEALTHY_EXIT_CODE, UnhealthyClock


def test_a_module_unhealthy_from_its_start_gives_up_once_the_limit_has_passed_since_the_start():
    clock = UnhealthyClock(limit_s=120.0, started_s=1000.0)
    assert not clock.observe(False, 1060.0)
    assert not clock.observe(False, 1119.9)
    assert clock.observe(False, 1120.0)


def test_one_healthy_moment_starts_the_count_again():
    clock = UnhealthyClock(limit_s=120.0, started_s=0.0)
    assert not clock.observe(False, 100.0)
    assert not clock.observe(True, 110.0)
    assert clock.unhealthy_for_s(110.0) == 0.0
    assert not clock.observe(False, 200.0)
    assert not clock.observe(False, 319.0)
    assert clock.observe(False, 320.0)


def test_a_module_healthy_all_along_never_gives_up():
    clock = UnhealthyClock(limit_s=1.0, started_s=0.0)
    assert not any(clock.observe(True, float(now_s)) for now_s in range(1, 1000))


def test_a_limit_of_zero_never_gives_up_however_long_the_module_is_unhealthy():
    clock = UnhealthyClock(limit_s=0.0, started_s=0.0)
    assert not any(clock.observe(False, float(now_s)) for now_s in range(0, 100_000, 1000))


def test_the_log_line_says_for_how_long_why_and_with_which_exit_code():
    clock = UnhealthyClock(limit_s=120.0, started_s=0.0)
    clock.observe(False, 125.0)
    line = clock.giving_up("sensor", "the field broker mqtt:1883 is not connected", 125.0)
    assert "sensor has been unhealthy for 125 s" in line
    assert "the field broker mqtt:1883 is not connected" in line
    assert f"exiting with code {UNHEALTHY_EXIT_CODE}" in line
    assert UNHEALTHY_EXIT_CODE not in (0, 2)  # neither a deliberate stop nor a configuration mistake
