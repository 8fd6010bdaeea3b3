"""Settings of the stand-in process (`python -m edgehub`): `EDGEHUB_*` variables, command-line flags on top."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.deployment import parse_variables
from edgefleet.environment import EnvCheck
from edgefleet.errors import EdgefleetError
from edgefleet.hub_wire import HUB_PUBLISHER_USER, parse_hub_address
from edgefleet.process import LogLevel
from edgefleet.secret_files import PasswordFile
from edgehub.standin import (
    DEFAULT_IP_BASE,
    UNHEALTHY_EXIT_S,
    check_ca_export_dir,
    check_ip_base,
    check_module_hosts,
    check_name,
)

__all__ = ["EdgeHubSettings", "parse_flags"]

T = TypeVar("T")


class EdgeHubSettings(BaseSettings):
    """Where the manifest is, which addresses modules reach, and where `$upstream` goes."""

    model_config = SettingsConfigDict(env_prefix="EDGEHUB_", extra="forbid", frozen=True, allow_inf_nan=False)
    env_check: ClassVar[EnvCheck] = EnvCheck(prefixes=("EDGEHUB_",))

    deployment: Path = Path("deployment/deployment.template.json")
    # `${NAME}` placeholders of the manifest; None leaves them as written (the template works so).
    variables: dict[str, str] | None = None
    edge_device: str = "edge1"
    state_dir: Path = Path("out/edgehub")
    # Where the CA certificate alone is published for modules (None: <state_dir>/public).
    ca_export_dir: Path | None = None
    # Written here unless `upstream_mqtt` names the sink service.
    lake_dir: Path = Path("out/lake")
    flush_every_s: float = Field(5.0, gt=0)
    flush_rows: int = Field(10_000, gt=0)
    ip_base: str = DEFAULT_IP_BASE
    module_hosts: dict[str, str] = Field(default_factory=dict)
    # The operator's module keys (MODULE=BASE64KEY lines, mode 0600); None: the stand-in makes its
    # own once, in <state_dir>/secrets/module-keys.
    module_keys_file: Path | None = None
    upstream_mqtt: tuple[str, int] | None = None
    # Modules' invoke_method() reaches edgeHub here, on every module's address; the SDK always uses 443. 0: off.
    method_port: int = Field(443, ge=0, le=65535)
    # The stand-in's login to the hub broker (edgehub.hub_auth): required with `upstream_mqtt`, unless
    # `upstream_anonymous` (a hub started with --allow-anonymous, development only). No TLS: the hub
    # link stays on loopback or an internal network.
    upstream_username: str = HUB_PUBLISHER_USER
    upstream_password_file: PasswordFile | None = None
    upstream_anonymous: bool = False
    health_file: Path | None = None
    # Unhealthy this long without a break (a module broker that cannot be restarted, the upstream
    # unreachable), the stand-in exits with code 3 so that its container's restart policy restarts it.
    # 0: never.
    unhealthy_exit_s: float = Field(UNHEALTHY_EXIT_S, ge=0)
    log_level: LogLevel = "INFO"

    @field_validator("deployment")
    @classmethod
    def _manifest_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"no deployment manifest at {value}; pass --deployment PATH or set EDGEHUB_DEPLOYMENT")
        return value

    @field_validator("variables", mode="before")
    @classmethod
    def _variables_from_pairs(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return _checked(lambda: parse_variables(value))
        return value

    @field_validator("edge_device")
    @classmethod
    def _edge_device_name(cls, value: str) -> str:
        return _checked(lambda: check_name(value, "edge device id"))

    @field_validator("state_dir", "lake_dir", "ca_export_dir", "module_keys_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Env files name the CA certificate: they must work from any directory.
        return value.resolve() if value is not None else None

    @field_validator("ip_base")
    @classmethod
    def _loopback_block(cls, value: str) -> str:
        return _checked(lambda: check_ip_base(value))

    @field_validator("module_hosts", mode="before")
    @classmethod
    def _hosts_from_pairs(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            pairs = [str(item).partition("=") for item in value]
            if any(not module or not sep for module, sep, _ in pairs):
                raise ValueError("write each module's address as MODULE=IP, e.g. --module-host sensor=172.28.1.2")
            return {module: host for module, _, host in pairs}
        return value

    @field_validator("module_hosts")
    @classmethod
    def _distinct_addresses(cls, value: dict[str, str]) -> dict[str, str]:
        # Which modules exist is known once the manifest is read; the stand-in checks the names then.
        return _checked(lambda: check_module_hosts(value, list(value)))

    @model_validator(mode="after")
    def _ca_export_dir_shows_no_key(self) -> EdgeHubSettings:
        if self.ca_export_dir is not None:
            _checked(lambda: check_ca_export_dir(self.state_dir, self.ca_export_dir or self.state_dir))
        return self

    @model_validator(mode="after")
    def _upstream_login(self) -> EdgeHubSettings:
        if self.upstream_mqtt is not None and self.upstream_password_file is None and not self.upstream_anonymous:
            raise ValueError(
                "the hub broker takes no anonymous clients: pass --upstream-password-file PATH "
                "(EDGEHUB_UPSTREAM_PASSWORD_FILE, the password of --upstream-username "
                f"{self.upstream_username}; `edgefleet compose secrets` writes <dir>/hub/clients/"
                f"{HUB_PUBLISHER_USER}.password), or --upstream-anonymous for a hub run with --allow-anonymous"
            )
        return self

    @field_validator("upstream_mqtt", mode="before")
    @classmethod
    def _hub_address(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _checked(lambda: parse_hub_address(value))
        return value


def _checked(check: Callable[[], T]) -> T:
    """Run a check that raises EdgefleetError; re-raise its message as pydantic's ValueError."""
    try:
        return check()
    except EdgefleetError as err:
        raise ValueError(str(err)) from None


def parse_flags(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Return the settings given on the command line (flags left out fall back to `EDGEHUB_*` and defaults)."""
    parser = argparse.ArgumentParser(
        prog="python -m edgehub",
        description="Run the offline edgeHub stand-in: one Mosquitto per module, the router, $upstream to the hub.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--deployment", help="deployment manifest or template (EDGEHUB_DEPLOYMENT)")
    parser.add_argument("--var", dest="variables", action="append", metavar="NAME=VALUE", help="expand ${NAME}")
    parser.add_argument("--edge-device", dest="edge_device", help="edge device id (default edge1)")
    parser.add_argument("--state-dir", dest="state_dir", help="certificates, broker state, module env files")
    parser.add_argument(
        "--ca-export-dir",
        dest="ca_export_dir",
        help="publish the CA certificate alone here, for modules to mount (default <state-dir>/public)",
    )
    parser.add_argument("--lake", dest="lake_dir", help="write the lake here (unless --upstream-mqtt is given)")
    parser.add_argument("--ip-base", dest="ip_base", help="modules connect to <ip-base>.10, .11, ... port 8883")
    parser.add_argument(
        "--module-host",
        dest="module_hosts",
        action="append",
        metavar="MODULE=IP",
        help="a module's broker address instead of <ip-base>.N (e.g. one container network per module)",
    )
    parser.add_argument(
        "--module-keys-file",
        dest="module_keys_file",
        metavar="PATH",
        help="module keys, MODULE=BASE64KEY lines, mode 0600 (default: made once in the state dir)",
    )
    parser.add_argument(
        "--upstream-mqtt", dest="upstream_mqtt", metavar="HOST:PORT", help="send $upstream to the IoT Hub sink service"
    )
    parser.add_argument(
        "--method-port", dest="method_port", help="HTTPS port of module-to-module direct methods (443; 0: off)"
    )
    parser.add_argument(
        "--upstream-username",
        dest="upstream_username",
        metavar="USER",
        help=f"the stand-in's user on the hub broker (default {HUB_PUBLISHER_USER})",
    )
    parser.add_argument(
        "--upstream-password-file",
        dest="upstream_password_file",
        metavar="PATH",
        help="file holding that user's password, mode 0600 (required with --upstream-mqtt)",
    )
    parser.add_argument(
        "--upstream-anonymous",
        dest="upstream_anonymous",
        action="store_true",
        help="connect to the hub without a password (a hub run with --allow-anonymous; development only)",
    )
    parser.add_argument("--health-file", dest="health_file", help="touch this file while healthy (HEALTHCHECK)")
    parser.add_argument(
        "--unhealthy-exit-s", dest="unhealthy_exit_s", help="exit with code 3 after this long unhealthy (0: never)"
    )
    parser.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return vars(parser.parse_args(argv))
