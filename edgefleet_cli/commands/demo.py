"""`edgefleet demo`: the whole loop on this machine (the work is in `edgefleet_cli.demo`)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType

from edgefleet_cli.commands import Subcommands

__all__ = ["add_demo_command", "cmd_demo"]


def add_demo_command(sub: Subcommands) -> None:
    """Add `demo`."""
    demo = sub.add_parser("demo", help="the whole loop: history, Spark training, the edge with the simulator, retrain")
    demo.add_argument("--workdir", default="out/demo")
    demo.add_argument("--devices", type=int, default=200)
    demo.add_argument("--rows", type=int, default=400)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--edge-seconds", type=float, default=60.0, help="how long the edge runs before the retrain")
    demo.add_argument("--rate", type=float, default=2.0, help="readings per second per simulated device")
    demo.add_argument("--dashboard-port", type=int, default=5006, help="live dashboard on http://127.0.0.1:PORT/")
    demo.add_argument("--no-dashboard", action="store_true", help="run without the dashboard")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; return its exit status."""
    from edgefleet_cli.demo import run_demo

    previous = signal.signal(signal.SIGTERM, _unwind_on_sigterm)
    try:
        return run_demo(
            Path(args.workdir),
            devices=args.devices,
            rows=args.rows,
            seed=args.seed,
            edge_seconds=args.edge_seconds,
            rate_per_s=args.rate,
            dashboard_port=None if args.no_dashboard else args.dashboard_port,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


def _unwind_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Unwind as Ctrl-C does, so that the edge the demo started (brokers, modules, dashboard) is stopped."""
    raise SystemExit(128 + signum)
