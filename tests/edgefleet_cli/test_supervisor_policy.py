"""The restart decisions of the module supervisor, without processes: policies, health, backoff."""

from __future__ import annotations

import signal

import pytest

from edgefleet_cli.supervisor import Action, Backoff, ModuleWatch, Phase, RestartPolicy, describe_exit

ALIVE = None  # the exit code of a process that still runs
FRESH = 0.1  # a health file touched a moment ago
SIGKILLED = -signal.SIGKILL


def _watch(policy: str = "always", **kwargs: object) -> ModuleWatch:
    options: dict = {"unhealthy_after_s": 5.0, "backoff": Backoff(1.0, 2.0, 30.0, reset_after_s=60.0)}
    options.update(kwargs)
    return ModuleWatch("inference", RestartPolicy(policy), **options)


def _fail(watch: ModuleWatch, now_s: float, exit_code: int = 1) -> float:
    """Let the module exit at `now_s`, restart it when due; return when it was restarted."""
    watch.step(now_s, exit_code, FRESH)
    assert watch.phase is Phase.RESTARTING and watch.restart_at_s is not None
    restart_at_s = watch.restart_at_s
    assert watch.step(restart_at_s, ALIVE, None) is Action.START
    watch.started(restart_at_s, restart=True)
    return restart_at_s


def test_backoff_starts_at_its_initial_delay_doubles_and_stops_at_its_cap():
    backoff = Backoff(initial_s=1.0, factor=2.0, max_s=30.0)
    assert [backoff.delay_s(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay_s(10_000) == 30.0


@pytest.mark.parametrize(
    ("policy", "exit_code", "restarted"),
    [
        ("never", 1, False),
        ("never", 0, False),
        ("on-failure", 0, False),
        ("on-failure", 2, True),
        ("on-failure", SIGKILLED, True),
        ("on-unhealthy", 0, False),
        ("on-unhealthy", SIGKILLED, True),
        ("always", 0, True),
        ("always", SIGKILLED, True),
    ],
)
def test_an_exited_module_is_restarted_as_its_restart_policy_says(policy, exit_code, restarted):
    watch = _watch(policy)
    watch.step(10.0, exit_code, FRESH)
    assert watch.phase is (Phase.RESTARTING if restarted else Phase.DOWN)
    assert watch.last_exit == exit_code


def test_a_killed_module_is_started_again_once_its_backoff_has_passed_and_counted_as_a_restart():
    watch = _watch()
    assert watch.step(10.0, SIGKILLED, FRESH) is Action.NOTHING
    assert watch.status(10.2).describe() == "restarting in 1 s"
    assert watch.step(10.5, ALIVE, None) is Action.NOTHING
    assert watch.step(11.0, ALIVE, None) is Action.START
    watch.started(11.0, restart=True)
    status = watch.status(11.0)
    assert (status.phase, status.restarts, status.last_exit) == (Phase.RUNNING, 1, SIGKILLED)


def test_a_module_that_keeps_crashing_waits_twice_as_long_each_time():
    watch = _watch()
    now_s = 0.0
    delays = []
    for _ in range(4):
        restarted_at_s = _fail(watch, now_s + 0.5)
        delays.append(restarted_at_s - (now_s + 0.5))
        now_s = restarted_at_s
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert watch.restarts == 4


def test_a_module_that_ran_long_enough_before_crashing_restarts_after_the_initial_delay_again():
    watch = _watch()
    now_s = _fail(watch, 1.0)
    now_s = _fail(watch, now_s + 1.0)
    assert watch.failures == 2
    watch.step(now_s + 120.0, 1, FRESH)
    assert watch.restart_at_s == now_s + 120.0 + 1.0


def test_a_module_whose_health_file_goes_stale_is_stopped_and_killed_if_it_does_not_stop():
    watch = _watch("always", stop_timeout_s=10.0)
    assert watch.step(1.0, ALIVE, FRESH) is Action.NOTHING
    assert watch.step(2.0, ALIVE, 5.5) is Action.TERMINATE
    assert watch.status(2.0).describe() == "unhealthy"
    assert watch.step(5.0, ALIVE, 8.5) is Action.NOTHING
    assert watch.step(12.0, ALIVE, 15.5) is Action.KILL


def test_a_module_stopped_for_being_unhealthy_is_restarted_even_when_it_exits_cleanly():
    watch = _watch("on-unhealthy")
    assert watch.step(2.0, ALIVE, 6.0) is Action.TERMINATE
    watch.step(3.0, 0, 7.0)
    assert watch.phase is Phase.RESTARTING


def test_an_unhealthy_module_under_on_failure_is_shown_unhealthy_but_left_running_until_it_recovers():
    watch = _watch("on-failure")
    assert watch.step(2.0, ALIVE, 6.0) is Action.NOTHING
    assert watch.phase is Phase.UNHEALTHY
    assert watch.step(3.0, ALIVE, FRESH) is Action.NOTHING
    assert watch.phase is Phase.RUNNING


def test_a_module_that_has_not_touched_its_health_file_yet_gets_the_start_grace_period():
    watch = _watch(start_grace_s=30.0, now_s=0.0)
    assert watch.step(29.0, ALIVE, None) is Action.NOTHING
    assert watch.step(31.0, ALIVE, None) is Action.TERMINATE


def test_a_module_stopped_on_purpose_stays_down():
    watch = _watch("always")
    watch.stopped(0)
    assert watch.step(100.0, 0, None) is Action.NOTHING
    assert watch.status(100.0).phase is Phase.STOPPED
    assert not watch.status(100.0).up


def test_exit_codes_read_as_words():
    assert describe_exit(None) == "-"
    assert describe_exit(2) == "exit code 2"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
