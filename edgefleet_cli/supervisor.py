"""Keep module processes running as edgeAgent does: restart policies, health files, exponential backoff.

`ModuleWatch` is the pure decision table for one module (observations in, an action out, the clock
passed in); `Supervisor` is the thread that observes real processes and carries the actions out.
The policies follow the edgeAgent's `restartPolicy`: `never`, `on-failure` (a non-zero exit),
`on-unhealthy` (a non-zero exit or a stale health file) and `always` (any exit, or unhealthy).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Protocol

__all__ = [
    "Action",
    "Backoff",
    "ModuleStatus",
    "ModuleWatch",
    "Phase",
    "RestartPolicy",
    "SupervisedEdge",
    "SupervisedProcess",
    "Supervisor",
    "describe_exit",
]

logger = logging.getLogger(__name__)

# The edgeAgent starts at 10 s and caps at 5 min; a local run wants its modules back sooner.
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 60.0
# A module misses this many twin reports before it counts as unhealthy.
UNHEALTHY_REPORTS = 3
# Reconnecting to a restarted broker takes a few seconds: never call a module unhealthy sooner.
MIN_UNHEALTHY_AFTER_S = 5.0
# A module touches its health file only once connected (and, inference, once its bundle is loaded).
START_GRACE_S = 60.0
# Time a module stopped for being unhealthy gets to finish in-flight messages before SIGKILL.
UNHEALTHY_STOP_TIMEOUT_S = 10.0
SUPERVISE_INTERVAL_S = 0.2


class RestartPolicy(StrEnum):
    """The edgeAgent's `restartPolicy` of a module."""

    NEVER = "never"
    ON_FAILURE = "on-failure"
    ON_UNHEALTHY = "on-unhealthy"
    ALWAYS = "always"

    def restarts_after_exit(self, exit_code: int) -> bool:
        """Return whether a module that exited with `exit_code` (negative: killed by a signal) is restarted."""
        if self is RestartPolicy.ALWAYS:
            return True
        return self is not RestartPolicy.NEVER and exit_code != 0

    def restarts_when_unhealthy(self) -> bool:
        """Return whether a module whose health file went stale is stopped and restarted."""
        return self in (RestartPolicy.ON_UNHEALTHY, RestartPolicy.ALWAYS)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before the n-th consecutive restart: `initial_s`, doubling, at most `max_s`."""

    initial_s: float = BACKOFF_INITIAL_S
    factor: float = 2.0
    max_s: float = BACKOFF_MAX_S
    # A module that ran this long before failing starts again from `initial_s`.
    reset_after_s: float = BACKOFF_RESET_AFTER_S

    def delay_s(self, consecutive_failures: int) -> float:
        """Return the wait before restarting after `consecutive_failures` (1 for the first) failures in a row."""
        exponent = max(0, consecutive_failures - 1)
        # Cap the exponent: the delay is capped anyway and a float power would overflow.
        return float(min(self.max_s, self.initial_s * self.factor ** min(exponent, 64)))


class Phase(StrEnum):
    """What a supervised module is doing now."""

    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    DOWN = "down"  # exited and its policy does not restart it
    STOPPED = "stopped"  # stopped on purpose (by the edge or a caller)


class Action(Enum):
    """What the supervisor must do to a module's process after a step."""

    NOTHING = "nothing"
    TERMINATE = "terminate"  # SIGTERM: finish in-flight messages and exit
    KILL = "kill"
    START = "start"


@dataclass(frozen=True, slots=True)
class ModuleStatus:
    """One module as the status table shows it."""

    name: str
    phase: Phase
    restarts: int
    last_exit: int | None
    restart_in_s: float | None = None

    @property
    def up(self) -> bool:
        """Return whether the module's process runs and is healthy."""
        return self.phase is Phase.RUNNING

    def describe(self) -> str:
        """Return the state as words: `running`, `restarting in 4 s`, `unhealthy`, ..."""
        if self.phase is Phase.RESTARTING and self.restart_in_s is not None:
            return f"restarting in {self.restart_in_s:.0f} s"
        return self.phase.value


def describe_exit(exit_code: int | None) -> str:
    """Return `exit code 2`, `signal SIGKILL` or `-` (no exit yet), as Popen.returncode means it."""
    if exit_code is None:
        return "-"
    if exit_code < 0:
        try:
            return f"signal {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"signal {-exit_code}"
    return f"exit code {exit_code}"


class ModuleWatch:
    """The restart decisions for one module: feed it what the process does, do what `step` returns."""

    def __init__(
        self,
        name: str,
        policy: RestartPolicy,
        *,
        unhealthy_after_s: float,
        backoff: Backoff | None = None,
        start_grace_s: float = START_GRACE_S,
        stop_timeout_s: float = UNHEALTHY_STOP_TIMEOUT_S,
        now_s: float = 0.0,
    ) -> None:
        self.name = name
        self.policy = policy
        self.unhealthy_after_s = unhealthy_after_s
        self.backoff = backoff or Backoff()
        self.start_grace_s = start_grace_s
        self.stop_timeout_s = stop_timeout_s
        self.phase = Phase.RUNNING
        self.restarts = 0
        self.last_exit: int | None = None
        self.failures = 0  # consecutive, for the backoff
        self.started_at_s = now_s
        self.restart_at_s: float | None = None
        self.kill_at_s: float | None = None  # set while an unhealthy module is being stopped
        self.was_unhealthy = False

    def step(self, now_s: float, exit_code: int | None, health_age_s: float | None) -> Action:
        """Decide from one observation: `exit_code` None while the process lives, the health file's age."""
        if self.phase is Phase.RESTARTING:
            return Action.START if self.restart_at_s is not None and now_s >= self.restart_at_s else Action.NOTHING
        if self.phase in (Phase.DOWN, Phase.STOPPED):
            return Action.NOTHING
        if exit_code is not None:
            self._exited(now_s, exit_code)
            return Action.START if self.phase is Phase.RESTARTING and now_s >= self._restart_at() else Action.NOTHING
        if self.kill_at_s is not None:
            return Action.KILL if now_s >= self.kill_at_s else Action.NOTHING
        if self._stale(now_s, health_age_s):
            return self._unhealthy(now_s)
        self.phase = Phase.RUNNING
        return Action.NOTHING

    def stopped(self, exit_code: int | None) -> None:
        """Record that the module was stopped on purpose: it stays down."""
        self.phase = Phase.STOPPED
        self.last_exit = exit_code
        self.kill_at_s = self.restart_at_s = None

    def started(self, now_s: float, *, restart: bool) -> None:
        """Record that a new process of the module runs (a restart counts when `restart`)."""
        if restart:
            self.restarts += 1
        self.phase = Phase.RUNNING
        self.started_at_s = now_s
        self.kill_at_s = self.restart_at_s = None
        self.was_unhealthy = False

    def status(self, now_s: float) -> ModuleStatus:
        """Return what the status table shows."""
        restart_in_s = None
        if self.phase is Phase.RESTARTING and self.restart_at_s is not None:
            restart_in_s = max(0.0, self.restart_at_s - now_s)
        return ModuleStatus(self.name, self.phase, self.restarts, self.last_exit, restart_in_s)

    def _stale(self, now_s: float, health_age_s: float | None) -> bool:
        """Return whether the health file says the module stopped working (None: not touched since start)."""
        if health_age_s is None:
            return now_s - self.started_at_s > max(self.start_grace_s, self.unhealthy_after_s)
        return health_age_s > self.unhealthy_after_s

    def _unhealthy(self, now_s: float) -> Action:
        self.phase = Phase.UNHEALTHY
        if not self.policy.restarts_when_unhealthy():
            return Action.NOTHING
        self.was_unhealthy = True
        self.kill_at_s = now_s + self.stop_timeout_s
        return Action.TERMINATE

    def _exited(self, now_s: float, exit_code: int) -> None:
        self.last_exit = exit_code
        self.kill_at_s = None
        restart = self.policy.restarts_after_exit(exit_code) or (
            self.was_unhealthy and self.policy.restarts_when_unhealthy()
        )
        if not restart:
            self.phase = Phase.DOWN
            return
        if now_s - self.started_at_s >= self.backoff.reset_after_s and not self.was_unhealthy:
            self.failures = 0
        self.failures += 1
        self.phase = Phase.RESTARTING
        self.restart_at_s = now_s + self.backoff.delay_s(self.failures)

    def _restart_at(self) -> float:
        return self.restart_at_s if self.restart_at_s is not None else 0.0


class SupervisedProcess(Protocol):
    """One module process as the supervisor sees it."""

    health_path: Path | None

    def exit_code(self) -> int | None:
        """Return the exit code, None while it runs."""

    def stopping(self) -> bool:
        """Return whether it was stopped (or is being stopped) on purpose."""

    def terminate(self) -> None:
        """Ask it to finish and exit (SIGTERM), without waiting."""

    def kill(self) -> None:
        """Kill it (SIGKILL), without waiting."""


class SupervisedEdge(Protocol):
    """What the supervisor needs of the edge: its module processes and a way to start one."""

    def module_process(self, module: str) -> SupervisedProcess | None:
        """Return the module's current process."""

    def restart_module(self, module: str) -> SupervisedProcess:
        """Start a new process for the module, without waiting until it is ready."""


def health_age_s(path: Path | None) -> float | None:
    """Return how long ago the health file was touched, None when it does not exist."""
    if path is None:
        return None
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except OSError:
        return None


class Supervisor:
    """A thread that watches every module's process and restarts it as its `ModuleWatch` decides."""

    def __init__(
        self, edge: SupervisedEdge, watches: Mapping[str, ModuleWatch], interval_s: float = SUPERVISE_INTERVAL_S
    ) -> None:
        self.edge = edge
        self.watches = dict(watches)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, SupervisedProcess | None] = {name: None for name in self.watches}

    def start(self) -> Supervisor:
        """Start watching (the processes run already)."""
        now = time.monotonic()
        for name, watch in self.watches.items():
            self._seen[name] = self.edge.module_process(name)
            watch.started(now, restart=False)
        self._thread = threading.Thread(target=self._run, name="module-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and wait for the thread (a restart in progress finishes first)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def statuses(self) -> dict[str, ModuleStatus]:
        """Return every module's status now."""
        now = time.monotonic()
        with self._lock:
            return {name: watch.status(now) for name, watch in self.watches.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name in self.watches:
                try:
                    self.tick(name, time.monotonic())
                except Exception:  # keep watching the others; the next tick tries again
                    logger.exception("Supervising module %s failed", name)

    def tick(self, name: str, now_s: float) -> None:
        """Observe one module's process and carry out what its watch decides."""
        watch = self.watches[name]
        process = self.edge.module_process(name)
        with self._lock:
            if process is not self._seen[name]:  # a caller started a new process itself
                self._seen[name] = process
                watch.started(now_s, restart=False)
            if process is None:
                return
            exit_code = process.exit_code()
            if process.stopping():
                if watch.phase is not Phase.STOPPED:
                    watch.stopped(exit_code)
                return
            before = watch.phase
            action = watch.step(now_s, exit_code, health_age_s(process.health_path))
        if watch.phase is not before and watch.phase in (Phase.RESTARTING, Phase.DOWN):
            self._report_exit(watch, now_s)
        self._carry_out(name, watch, process, action, now_s)

    def _report_exit(self, watch: ModuleWatch, now_s: float) -> None:
        status = watch.status(now_s)
        if status.phase is Phase.DOWN:
            logger.error(
                "Module %s exited (%s); its restartPolicy %s does not restart it",
                watch.name,
                describe_exit(watch.last_exit),
                watch.policy.value,
            )
            return
        logger.warning(
            "Module %s exited (%s); restarting it in %.1f s (restart %d)",
            watch.name,
            describe_exit(watch.last_exit),
            status.restart_in_s or 0.0,
            watch.restarts + 1,
        )

    def _carry_out(
        self, name: str, watch: ModuleWatch, process: SupervisedProcess, action: Action, now_s: float
    ) -> None:
        if action is Action.TERMINATE:
            logger.warning(
                "Module %s is unhealthy: its health file was not touched for %.0f s; stopping it to restart it",
                name,
                watch.unhealthy_after_s,
            )
            process.terminate()
        elif action is Action.KILL:
            logger.warning("Module %s did not stop within %.0f s; killing it", name, watch.stop_timeout_s)
            process.kill()
        elif action is Action.START:
            cause = "unhealthy, then " if watch.was_unhealthy else ""
            new = self.edge.restart_module(name)
            with self._lock:
                self._seen[name] = new
                watch.started(now_s, restart=True)
            logger.warning(
                "Restarted module %s (%s%s; restart %d)", name, cause, describe_exit(watch.last_exit), watch.restarts
            )
