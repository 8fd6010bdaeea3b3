"""What every edge module shares: settings base, the SDK link to edgeHub, an outbox, latency stats.

A module's `__main__` only wires: `load_settings(...)` → `create_module_client()` →
`Service(settings, client).run(stop_event)`, with SIGTERM setting the stop event (the process
helpers every process shares live in `edgefleet.process`). Services talk to edgeHub through
`EdgeLink` (`modules.runtime.client`), over a `ModuleClient`: the azure-iot-device client on a
device, an in-memory fake in tests.
"""

from __future__ import annotations

from modules.runtime.client import STOP_RESERVE_S, EdgeLink, MethodHandler, ModuleClient, create_module_client
from modules.runtime.last_good import (
    LastGoodDesired,
    StartDesired,
    accept_desired,
    apply_desired_patch,
    desired_at_start,
    desired_from_patch,
)
from modules.runtime.latency import LatencyWindow
from modules.runtime.outbox import Outbox
from modules.runtime.settings import LOG_LEVELS, ModuleSettings
from modules.runtime.watchdog import UNHEALTHY_EXIT_CODE, UnhealthyClock

__all__ = [
    "LOG_LEVELS",
    "STOP_RESERVE_S",
    "UNHEALTHY_EXIT_CODE",
    "EdgeLink",
    "LastGoodDesired",
    "LatencyWindow",
    "MethodHandler",
    "ModuleClient",
    "ModuleSettings",
    "Outbox",
    "StartDesired",
    "UnhealthyClock",
    "accept_desired",
    "apply_desired_patch",
    "create_module_client",
    "desired_at_start",
    "desired_from_patch",
]
