"""Settings every module has, and applying a twin desired-properties patch to a module's typed desired values."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.desired import LOG_LEVELS
from edgefleet.environment import EnvCheck

__all__ = ["LOG_LEVELS", "ModuleSettings"]


class ModuleSettings(BaseSettings):
    """Settings every module has; subclasses add their own with an env prefix."""

    # No float setting takes inf or nan: an infinite interval or window is a typo, never a choice.
    model_config = SettingsConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)
    # Module variables have no prefix (the manifest's `env`): near misses of these names are refused.
    env_check: ClassVar[EnvCheck] = EnvCheck()

    log_level: str = Field("INFO", validation_alias=AliasChoices("log_level", "LOG_LEVEL"))
    report_interval_s: float = Field(
        10.0, gt=0, allow_inf_nan=False, validation_alias=AliasChoices("report_interval_s", "REPORT_INTERVAL_S")
    )
    # On a device the runtime sets IOTEDGE_DEVICEID; the stand-in's connection string names it.
    edge_device: str | None = Field(None, validation_alias=AliasChoices("edge_device", "IOTEDGE_DEVICEID"))
    # Touched after every twin report; the image's HEALTHCHECK reads its age.
    health_file: Path | None = Field(None, validation_alias=AliasChoices("health_file", "HEALTH_FILE"))
    # Unhealthy this long without a break (starting included), the module exits so its runtime restarts
    # it; longer than an orchestrator's health check (3 report intervals), so one that acts on health
    # gets there first. 0: never.
    unhealthy_exit_s: float = Field(
        120.0, ge=0, allow_inf_nan=False, validation_alias=AliasChoices("unhealthy_exit_s", "UNHEALTHY_EXIT_S")
    )
    edgehub_connection_string: SecretStr | None = Field(
        None, validation_alias=AliasChoices("edgehub_connection_string", "EdgeHubConnectionString")
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"LOG_LEVEL is {value!r}; set one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @model_validator(mode="after")
    def _edge_device_from_connection_string(self) -> ModuleSettings:
        if self.edge_device is None and self.edgehub_connection_string is not None:
            parts = dict(
                part.split("=", 1)
                for part in self.edgehub_connection_string.get_secret_value().split(";")
                if "=" in part
            )
            object.__setattr__(self, "edge_device", parts.get("DeviceId"))
        return self

    @property
    def edge_device_id(self) -> str:
        """Return the IoT Edge device this module runs on ('local' when nothing names it)."""
        return self.edge_device or "local"
