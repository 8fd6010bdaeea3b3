"""Settings of the dashboard process (`python -m dashboard`): `DASHBOARD_*` variables, command-line flags on top."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.hub_wire import HUB_DASHBOARD_USER, HubAddress
from edgefleet.process import LogLevel
from edgefleet.secret_files import PasswordFile

__all__ = ["DashboardSettings", "add_flags", "parse_flags", "settings_flags"]


class DashboardSettings(BaseSettings):
    """Which hub broker feeds the dashboard and where it serves."""

    model_config = SettingsConfigDict(env_prefix="DASHBOARD_", extra="forbid", frozen=True)

    hub: HubAddress = ("127.0.0.1", 1884)
    # The dashboard's login to the hub broker (a reader there, edgehub.hub_auth): required unless
    # `hub_anonymous` (a hub run with --allow-anonymous, development only). No TLS: the hub link
    # stays on loopback or an internal network.
    hub_username: str = HUB_DASHBOARD_USER
    hub_password_file: PasswordFile | None = None
    hub_anonymous: bool = False
    port: int = Field(5006, ge=1, le=65535)
    address: str = "127.0.0.1"
    # Browser origins allowed to open the dashboard; empty: the serving address and localhost.
    allow_websocket_origin: tuple[str, ...] = ()
    silent_after_s: float = Field(60.0, gt=0)
    log_level: LogLevel = "INFO"

    @model_validator(mode="after")
    def _hub_login(self) -> DashboardSettings:
        if self.hub_password_file is None and not self.hub_anonymous:
            raise ValueError(
                "the hub broker takes no anonymous clients: pass --hub-password-file PATH "
                f"(DASHBOARD_HUB_PASSWORD_FILE, the password of --hub-username {self.hub_username}; "
                f"`edgefleet compose secrets` writes <dir>/hub/clients/{HUB_DASHBOARD_USER}.password), "
                "or --hub-anonymous for a hub run with --allow-anonymous"
            )
        return self


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add the dashboard's flags; flags left out fall back to `DASHBOARD_*` and the defaults."""
    flag = partial(parser.add_argument, default=argparse.SUPPRESS)
    flag("--hub", help="the hub broker as HOST:PORT (default 127.0.0.1:1884)")
    flag(
        "--hub-username", metavar="USER", help=f"the dashboard's user on the hub broker (default {HUB_DASHBOARD_USER})"
    )
    flag("--hub-password-file", metavar="PATH", help="file holding that user's password, mode 0600 (required)")
    flag(
        "--hub-anonymous",
        action="store_true",
        help="connect to the hub without a password (a hub run with --allow-anonymous; development only)",
    )
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
