"""Settings of `python -m field_broker`: `FIELD_BROKER_*` variables, command-line flags on top."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.environment import EnvCheck
from edgefleet.process import LogLevel

__all__ = ["FieldBrokerSettings", "parse_flags"]


class FieldBrokerSettings(BaseSettings):
    """Where the operator's secrets are, where the broker keeps its state, where it listens."""

    model_config = SettingsConfigDict(env_prefix="FIELD_BROKER_", extra="forbid", frozen=True, allow_inf_nan=False)
    env_check: ClassVar[EnvCheck] = EnvCheck(prefixes=("FIELD_BROKER_",))

    # Certificates and the password file (field_broker.config); mounted read-only from the host.
    config_dir: Path = Path("/etc/edgefleet/field")
    # The generated mosquitto.conf and ACL, and the persistence file.
    state_dir: Path = Path("/var/lib/edgefleet/field-broker")
    port: int = Field(8883, ge=1, le=65535)
    bind: str = Field("0.0.0.0", min_length=1)
    # Development only: an anonymous, unencrypted listener next to the TLS one.
    insecure_plain_port: int | None = Field(None, ge=1, le=65535)
    health_file: Path | None = None
    # How often the password file is checked for changes (a new device is let in that much later).
    reload_check_s: float = Field(2.0, gt=0)
    log_level: LogLevel = "INFO"

    @field_validator("config_dir", "state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # The rendered mosquitto.conf names these files: they must work from any directory.
        return value.resolve()

    @model_validator(mode="after")
    def _distinct_ports(self) -> FieldBrokerSettings:
        if self.insecure_plain_port == self.port:
            raise ValueError(f"--insecure-plain-port must differ from --port ({self.port})")
        return self


def parse_flags(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Return the settings given on the command line (flags left out fall back to `FIELD_BROKER_*` and defaults)."""
    parser = argparse.ArgumentParser(
        prog="python -m field_broker",
        description="Run the field broker: Mosquitto with TLS, a password per identity and an ACL per role.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config-dir", dest="config_dir", help="server.pem, server-key.pem, passwords (read-only)")
    parser.add_argument("--state-dir", dest="state_dir", help="generated config, ACL and persistence")
    parser.add_argument("--port", help="TLS listener port (default 8883)")
    parser.add_argument("--bind", help="TLS listener address (default 0.0.0.0)")
    parser.add_argument(
        "--insecure-plain-port",
        dest="insecure_plain_port",
        metavar="N",
        help="DEVELOPMENT ONLY: also listen on N, anonymous and unencrypted, with no ACL",
    )
    parser.add_argument("--health-file", dest="health_file", help="touch this file while healthy (HEALTHCHECK)")
    parser.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return vars(parser.parse_args(argv))
