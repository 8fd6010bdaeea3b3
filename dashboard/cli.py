"""`edgefleet dashboard`: serve the live fleet dashboard, fed from the local IoT Hub's broker.

The process image runs the same thing as `python -m dashboard`.
"""

from __future__ import annotations

import argparse
from typing import Any

from dashboard.settings import DashboardSettings, add_flags, settings_flags

__all__ = ["cmd_dashboard", "register"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `dashboard` subcommand to an argparse subparsers object and return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dashboard",
        help="serve a live fleet dashboard (Bokeh) fed from the local IoT Hub",
        description="Subscribe to every upstream message on the hub broker and serve a live fleet dashboard.",
    )
    add_flags(parser)
    parser.set_defaults(func=cmd_dashboard)
    return parser


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Run `edgefleet dashboard` until SIGTERM or Ctrl-C; return 0."""
    from dashboard.service import run_dashboard
    from edgefleet.process import load_settings, stop_event_on_signals

    settings = load_settings(DashboardSettings, **settings_flags(args))
    stop_event = stop_event_on_signals()
    hub_host, hub_port = settings.hub

    def ready(url: str) -> None:
        print(f"Dashboard: {url} (hub {hub_host}:{hub_port})", flush=True)  # noqa: T201

    run_dashboard(settings, stop_event, ready)
    print("Dashboard stopped", flush=True)  # noqa: T201
    return 0
