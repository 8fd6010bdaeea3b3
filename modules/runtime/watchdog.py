"""Decide when a module that stays unhealthy should exit (the clock lives in `edgefleet.watchdog`)."""

from __future__ import annotations

from edgefleet.watchdog import UNHEALTHY_EXIT_CODE, UnhealthyClock

__all__ = ["UNHEALTHY_EXIT_CODE", "UnhealthyClock"]
