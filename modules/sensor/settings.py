"""Typed settings of the sensor module, validated once at start (its desired properties: edgefleet.desired)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, model_validator

from modules.runtime import ModuleSettings

# The sensor keeps its last accepted desired properties here across restarts.
DEFAULT_STATE_DIR = Path("/tmp/edgefleet-sensor")


def _env(name: str) -> Any:
    return AliasChoices(name.lower(), name)


class SensorSettings(ModuleSettings):
    """Environment of the sensor module (the deployment manifest's `env`)."""

    field_mqtt_host: str = Field(validation_alias=_env("FIELD_MQTT_HOST"))
    field_mqtt_port: int = Field(1883, ge=1, le=65535, validation_alias=_env("FIELD_MQTT_PORT"))
    field_mqtt_user: str | None = Field(None, validation_alias=_env("FIELD_MQTT_USER"))
    field_mqtt_password: SecretStr | None = Field(None, validation_alias=_env("FIELD_MQTT_PASSWORD"))
    field_client_id: str = Field("edgefleet-sensor", min_length=1, validation_alias=_env("FIELD_CLIENT_ID"))
    field_keepalive_s: int = Field(30, ge=5, validation_alias=_env("FIELD_KEEPALIVE_S"))
    max_reading_bytes: int = Field(16 * 1024, ge=256, validation_alias=_env("MAX_READING_BYTES"))
    # A field message may carry a batch of readings (a gateway device); bigger ones are dead-lettered.
    max_field_message_bytes: int = Field(256 * 1024, ge=256, validation_alias=_env("MAX_FIELD_MESSAGE_BYTES"))
    # Batches waiting for edgeHub before the field client stops reading (the field broker queues the rest).
    max_pending_batches: int = Field(1000, ge=1, validation_alias=_env("MAX_PENDING_BATCHES"))
    # Where the last accepted desired properties are kept across a restart.
    state_dir: Path = Field(DEFAULT_STATE_DIR, validation_alias=_env("STATE_DIR"))

    @model_validator(mode="after")
    def _credentials_together(self) -> SensorSettings:
        if (self.field_mqtt_user is None) != (self.field_mqtt_password is None):
            raise ValueError("Set FIELD_MQTT_USER and FIELD_MQTT_PASSWORD together")
        return self
