"""Decide when a process that stays unhealthy should exit, so that its container runtime restarts it.

Docker's restart policies and edgeAgent act on a process that exits, never on a failing
HEALTHCHECK: a module, the edgeHub stand-in or the sink that cannot recover restarts itself by
exiting with UNHEALTHY_EXIT_CODE.
"""

from __future__ import annotations

__all__ = ["UNHEALTHY_EXIT_CODE", "UnhealthyClock"]

# Distinct from 0 (stopped on purpose) and 2 (a configuration mistake): restarting may help.
UNHEALTHY_EXIT_CODE = 3


class UnhealthyClock:
    """Measure how long a process has been unhealthy without a break; starting counts as unhealthy."""

    def __init__(self, limit_s: float, started_s: float, *, setting: str = "UNHEALTHY_EXIT_S") -> None:
        self.limit_s = limit_s
        self.setting = setting  # the variable that sets `limit_s`, named in the log line
        self._unhealthy_since_s: float | None = started_s

    def observe(self, healthy: bool, now_s: float) -> bool:
        """Record one health check; return True when the process has been unhealthy for `limit_s` (0: never)."""
        if healthy:
            self._unhealthy_since_s = None
            return False
        if self._unhealthy_since_s is None:
            self._unhealthy_since_s = now_s
        return self.limit_s > 0 and self.unhealthy_for_s(now_s) >= self.limit_s

    def unhealthy_for_s(self, now_s: float) -> float:
        """Return for how long the process has been unhealthy (0 while healthy)."""
        return 0.0 if self._unhealthy_since_s is None else now_s - self._unhealthy_since_s

    def giving_up(self, process: str, problem: str, now_s: float) -> str:
        """Return the log line that says why and after how long the process exits."""
        return (
            f"{process} has been unhealthy for {self.unhealthy_for_s(now_s):.0f} s "
            f"({self.setting}={self.limit_s:g}): {problem}; stopping and exiting with code "
            f"{UNHEALTHY_EXIT_CODE} so that the container runtime restarts it"
        )
