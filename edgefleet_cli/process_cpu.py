"""CPU time of the edge's processes under this one, by role: what `make demo` and the edge benchmark report.

Linux only (/proc): user + system seconds of every thread, in clock ticks (10 ms). A process that
restarted between two samples counts from its new start; one that is gone counts nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EDGE_ROLES", "Process", "cpu_seconds", "descendants", "edge_cpu_seconds"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Role → what names the process: a module's `python -m modules.<name>`, or Mosquitto's command name.
EDGE_ROLES = {"sensor": "modules.sensor", "inference": "modules.inference", "brokers": "mosquitto"}


@dataclass(frozen=True)
class Process:
    """One process: its parent, command name and command line."""

    pid: int
    ppid: int
    name: str
    cmdline: tuple[str, ...]


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of a process (all its threads), 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(root: int | None = None) -> list[Process]:
    """Return every process below `root` (default: this one), at any depth."""
    root = os.getpid() if root is None else root
    processes: dict[int, Process] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        pid = int(entry.name)
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        processes[pid] = Process(pid, ppid, name, tuple(part.decode(errors="replace") for part in cmdline.split(b"\0")))
    below: list[Process] = []
    parents = {root}
    while parents:
        children = [process for process in processes.values() if process.ppid in parents]
        below.extend(children)
        parents = {child.pid for child in children}
    return below


def edge_cpu_seconds(root: int | None = None) -> dict[str, float]:
    """Return CPU seconds so far of the sensor, inference and broker processes below `root`, by role."""
    used = dict.fromkeys(EDGE_ROLES, 0.0)
    for process in descendants(root):
        for role, marker in EDGE_ROLES.items():
            if process.name == marker or marker in process.cmdline:
                used[role] += cpu_seconds(process.pid)
                break
    return used
