"""Settings of the sink service (`python -m edgehub.sink_service`): `SINK_*` variables, command-line flags on top."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.environment import EnvCheck
from edgefleet.hub_wire import HubAddress
from edgefleet.process import LogLevel
from edgehub.hub_auth import HubUsers
from edgehub.sink import DEFAULT_ROLL_BYTES, DEFAULT_ROLL_EVERY_S

__all__ = ["SinkSettings", "parse_flags"]


class SinkSettings(BaseSettings):
    """Where the hub broker listens and where the lake goes."""

    model_config = SettingsConfigDict(env_prefix="SINK_", extra="forbid", frozen=True, allow_inf_nan=False)
    env_check: ClassVar[EnvCheck] = EnvCheck(prefixes=("SINK_",))

    listen: HubAddress = ("127.0.0.1", 1884)
    # Who may connect to the hub broker: a Mosquitto password file (edgehub.hub_auth), read once at
    # start. Without it the broker takes anonymous clients, and only when `allow_anonymous` says so.
    users_file: HubUsers | None = None
    allow_anonymous: bool = False
    lake_dir: Path = Path("out/lake")
    state_dir: Path = Path("out/sink")
    flush_every_s: float = Field(5.0, gt=0)
    flush_rows: int = Field(10_000, gt=0)
    # Lake files roll (close and appear) at this size or age, per date partition (edgehub/sink.py,
    # where the defaults are chosen); between rolls the journal keeps the rows durable.
    roll_every_s: float = Field(DEFAULT_ROLL_EVERY_S, gt=0)
    roll_bytes: int = Field(DEFAULT_ROLL_BYTES, gt=0)
    # The most feature columns the lake may hold (edgehub/sink.py: which names become columns).
    max_feature_columns: int = Field(64, gt=0)
    health_file: Path | None = None
    # Unhealthy this long without a break (its hub broker cannot be restarted, or the lake writer is
    # not subscribed to it), the sink exits with code 3 so that its container is restarted. 0: never.
    unhealthy_exit_s: float = Field(120.0, ge=0)
    log_level: LogLevel = "INFO"

    @field_validator("lake_dir", "state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @model_validator(mode="after")
    def _someone_authenticates(self) -> SinkSettings:
        if self.users_file is None and not self.allow_anonymous:
            raise ValueError(
                "the hub broker needs its users: pass --users-file PATH (SINK_USERS_FILE; `edgefleet compose "
                "secrets` writes <dir>/hub/passwords), or --allow-anonymous for development only"
            )
        if self.users_file is not None and self.allow_anonymous:
            raise ValueError("pass either --users-file or --allow-anonymous, not both")
        return self


def parse_flags(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Return the settings given on the command line (flags left out fall back to `SINK_*` and defaults)."""
    parser = argparse.ArgumentParser(
        prog="python -m edgehub.sink_service",
        description="Run the local IoT Hub: an MQTT broker the stand-in sends $upstream to, and the lake writer.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="hub broker address (default 127.0.0.1:1884)")
    parser.add_argument(
        "--users-file",
        dest="users_file",
        metavar="PATH",
        help="the hub broker's users: a Mosquitto password file, 0600 (edgefleet compose secrets: <dir>/hub/passwords)",
    )
    parser.add_argument(
        "--allow-anonymous",
        dest="allow_anonymous",
        action="store_true",
        help="let any client connect to the hub broker without a password (development only)",
    )
    parser.add_argument("--lake", dest="lake_dir", help="telemetry lake directory (default out/lake)")
    parser.add_argument("--state-dir", dest="state_dir", help="broker persistence and logs (default out/sink)")
    parser.add_argument("--flush-every-s", dest="flush_every_s", help="write buffered rows at least this often")
    parser.add_argument(
        "--roll-every-s", dest="roll_every_s", help="close a lake file and make its rows visible after this long (60)"
    )
    parser.add_argument("--roll-bytes", dest="roll_bytes", help="close a lake file at this size (128 MiB)")
    parser.add_argument("--health-file", dest="health_file", help="touch this file while healthy (HEALTHCHECK)")
    parser.add_argument(
        "--unhealthy-exit-s", dest="unhealthy_exit_s", help="exit with code 3 after this long unhealthy (0: never)"
    )
    parser.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return vars(parser.parse_args(argv))
