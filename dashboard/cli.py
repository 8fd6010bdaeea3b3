"""`edgefleet dashboard`: serve the live fleet dashboard, fed from the local IoT Hub's broker.

Also runnable as `python -m dashboard.cli` (the tests and the benchmark start it so).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

__all__ = ["cmd_dashboard", "main", "register"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub", default="127.0.0.1:1884", help="the hub broker as HOST:PORT (default 127.0.0.1:1884)")
    parser.add_argument("--port", type=int, default=5006, help="HTTP port to serve on (default 5006)")
    parser.add_argument("--address", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument(
        "--allow-websocket-origin",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="browser origin allowed to open the dashboard (repeatable; default: the serving address and localhost)",
    )
    parser.add_argument(
        "--silent-after-s", type=float, default=60.0, help="call a device silent after this long without a reading"
    )


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `dashboard` subcommand to an argparse subparsers object and return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dashboard",
        help="serve a live fleet dashboard (Bokeh) fed from the local IoT Hub",
        description="Subscribe to every upstream message on the hub broker and serve a live fleet dashboard.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=cmd_dashboard)
    return parser


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Run `edgefleet dashboard` until SIGTERM or Ctrl-C; return 0."""
    from dashboard.app import build_server
    from dashboard.feed import HubFeed
    from dashboard.state import FleetState
    from edgefleet.hub_wire import parse_hub_address

    host, hub_port = parse_hub_address(args.hub)
    state = FleetState(silent_after_s=args.silent_after_s)
    feed = HubFeed(state, host, hub_port).start()
    server = build_server(
        state, port=args.port, address=args.address, allow_websocket_origin=args.allow_websocket_origin
    )
    server.start()
    loop = server.io_loop

    def stop(*_: Any) -> None:
        loop.add_callback_from_signal(loop.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    shown = "localhost" if args.address in ("0.0.0.0", "::") else args.address
    print(f"Dashboard: http://{shown}:{args.port}/ (hub {host}:{hub_port})", flush=True)  # noqa: T201
    try:
        loop.start()
    finally:
        server.stop()
        feed.stop()
    print("Dashboard stopped", flush=True)  # noqa: T201
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the dashboard command from its own argv."""
    parser = argparse.ArgumentParser(prog="edgefleet dashboard", description="Serve the live fleet dashboard.")
    _add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cmd_dashboard(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
