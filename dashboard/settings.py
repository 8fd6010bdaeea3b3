"""Settings of the dashboard process (`python -m dashboard`): `DASHBOARD_*` variables, command-line flags on top."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.hub_wire import HubAddress
from edgefleet.process import LogLevel

__all__ = ["DashboardSettings", "add_flags", "parse_flags", "settings_flags"]


class DashboardSettings(BaseSettings):
    """Which hub broker feeds the dashboard and where it serves."""

    model_config = SettingsConfigDict(env_prefix="DASHBOARD_", extra="forbid", frozen=True)

    hub: HubAddress = ("127.0.0.1", 1884)
    port: int = Field(5006, ge=1, le=65535)
    address: str = "127.0.0.1"
    # Browser origins allowed to open the dashboard; empty: the serving address and localhost.
    allow_websocket_origin: tuple[str, ...] = ()
    silent_after_s: float = Field(60.0, gt=0)
    log_level: LogLevel = "INFO"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add the dashboard's flags; flags left out fall back to `DASHBOARD_*` and the defaults."""
    flag = partial(parser.add_argument, default=argparse.SUPPRESS)
    flag("--hub", help="the hub broker as HOST:PORT (default 127.0.0.1:1884)")
    flag("--port", type=int, help="HTTP port to serve on (default 5006)")
    flag("--address", help="address to serve on (default 127.0.0.1)")
    flag(
        "--allow-websocket-origin",
        action="append",
        metavar="HOST[:PORT]",
        help="browser origin allowed to open the dashboard (repeatable; default: the serving address and localhost)",
    )
    flag("--silent-after-s", type=float, help="call a device silent after this long without a reading (default 60)")


def settings_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Return the settings among parsed flags (a parser may carry others, e.g. `edgefleet`'s)."""
    return {name: value for name, value in vars(args).items() if name in DashboardSettings.model_fields}


def parse_flags(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Return the settings given on the command line of `python -m dashboard`."""
    parser = argparse.ArgumentParser(prog="python -m dashboard", description="Serve the live fleet dashboard.")
    add_flags(parser)
    parser.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return settings_flags(parser.parse_args(argv))
