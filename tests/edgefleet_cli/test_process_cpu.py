"""CPU time of the edge's processes by role, read from /proc for real child processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from edgefleet_cli.process_cpu import descendants, edge_cpu_seconds
from tests.edge_fixtures import wait_for

# Burns CPU, then starts a grandchild named like the inference module and waits for stdin to close.
_CHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    end = time.process_time() + 0.4
    while time.process_time() < end:
        pass
    grandchild = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "modules.inference"],
                                  stdin=subprocess.PIPE)
    print("ready", flush=True)
    sys.stdin.read()
    grandchild.stdin.close()
    grandchild.wait()
    """
)


def test_the_edge_roles_count_the_cpu_of_processes_below_this_one_at_any_depth_by_their_module_name():
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "modules.sensor"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        wait_for(lambda: any("modules.inference" in p.cmdline for p in descendants()), timeout_s=10)
        used = edge_cpu_seconds()
        assert used["sensor"] >= 0.3  # the child's busy loop, not its start alone
        assert 0 <= used["inference"] < 0.3  # the idle grandchild: found, but it only started
        assert used["brokers"] == 0
        assert {p.pid for p in descendants()} >= {child.pid}
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
