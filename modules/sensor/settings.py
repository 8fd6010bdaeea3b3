"""Typed settings of the sensor module, validated once at start (its desired properties: edgefleet.desired)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, Field, field_validator, model_validator

from edgefleet.environment import EnvCheck
from edgefleet.secret_files import PasswordFile, check_ca_file
from modules.runtime import ModuleSettings

__all__ = ["DEFAULT_STATE_DIR", "SensorSettings"]

# The sensor keeps its last accepted desired properties here across restarts.
DEFAULT_STATE_DIR = Path("/tmp/edgefleet-sensor")
# The field broker's ports by convention: plain MQTT, and MQTT over TLS (FIELD_MQTT_CA_FILE set).
PLAIN_PORT = 1883
TLS_PORT = 8883


def _env(name: str) -> Any:
    return AliasChoices(name.lower(), name)


class SensorSettings(ModuleSettings):
    """Environment of the sensor module (the deployment manifest's `env`)."""

    # The sensor reads no SENSOR_* variable: one set (e.g. compose's SENSOR_MAX_READING_AGE_S) is a mistake.
    env_check: ClassVar[EnvCheck] = EnvCheck(prefixes=("SENSOR_",))

    field_mqtt_host: str = Field(validation_alias=_env("FIELD_MQTT_HOST"))
    # Default: 1883, or 8883 with FIELD_MQTT_CA_FILE.
    field_mqtt_port: int = Field(PLAIN_PORT, ge=1, le=65535, validation_alias=_env("FIELD_MQTT_PORT"))
    # The CA certificate (PEM) that signed the field broker's certificate: set, the sensor connects
    # with TLS and checks the broker's certificate and that it names FIELD_MQTT_HOST.
    field_mqtt_ca_file: Path | None = Field(None, validation_alias=_env("FIELD_MQTT_CA_FILE"))
    field_mqtt_username: str | None = Field(None, min_length=1, validation_alias=_env("FIELD_MQTT_USERNAME"))
    # The password comes from a mounted secret file (read once at start), never from the environment.
    field_mqtt_password_file: PasswordFile | None = Field(None, validation_alias=_env("FIELD_MQTT_PASSWORD_FILE"))
    field_client_id: str = Field("edgefleet-sensor", min_length=1, validation_alias=_env("FIELD_CLIENT_ID"))
    field_keepalive_s: int = Field(30, ge=5, validation_alias=_env("FIELD_KEEPALIVE_S"))
    max_reading_bytes: int = Field(16 * 1024, ge=256, validation_alias=_env("MAX_READING_BYTES"))
    # A field message may carry a batch of readings (a gateway device); bigger ones are dead-lettered.
    max_field_message_bytes: int = Field(256 * 1024, ge=256, validation_alias=_env("MAX_FIELD_MESSAGE_BYTES"))
    # Batches waiting for edgeHub before the field client stops reading (the field broker queues the rest).
    max_pending_batches: int = Field(1000, ge=1, validation_alias=_env("MAX_PENDING_BATCHES"))
    # Where the last accepted desired properties are kept across a restart.
    state_dir: Path = Field(DEFAULT_STATE_DIR, validation_alias=_env("STATE_DIR"))
    # The window of plausible reading dates around the edge's clock; outside it a reading is
    # dead-lettered (`bad_timestamp`), kept with its payload, not written into a stray lake day.
    # Past: a device that loses the field broker buffers its readings and sends them late; a week
    # covers a device offline over a long weekend or holiday without an engineer on site. (The
    # edge's own upstream outages do not count: edgeHub stores those after the sensor stamped them.)
    max_reading_age_s: float = Field(7 * 86_400, gt=0, validation_alias=_env("MAX_READING_AGE_S"))
    # Future: NTP-synced device clocks agree within a second; minutes allow for a device that syncs
    # rarely. A reading from further ahead is a broken clock, never a buffered one.
    max_clock_skew_s: float = Field(300, ge=0, validation_alias=_env("MAX_CLOCK_SKEW_S"))
    # A seq this far ahead of the device's recent highest is taken once without moving its duplicate
    # window (modules/sensor/sequence.py): an impostor or a corrupt counter cannot mute the real device.
    seq_jump_limit: int = Field(10_000, ge=1, validation_alias=_env("SEQ_JUMP_LIMIT"))

    @field_validator("field_mqtt_ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        return None if value is None else check_ca_file(value)

    @model_validator(mode="after")
    def _credentials_together(self) -> SensorSettings:
        if self.field_mqtt_password_file is not None and self.field_mqtt_username is None:
            raise ValueError(
                "FIELD_MQTT_PASSWORD_FILE is set but FIELD_MQTT_USERNAME is not: set FIELD_MQTT_USERNAME "
                "to the sensor's user on the field broker"
            )
        if self.field_mqtt_username is not None and self.field_mqtt_password_file is None:
            raise ValueError(
                "FIELD_MQTT_USERNAME is set but FIELD_MQTT_PASSWORD_FILE is not: mount a file holding "
                "the password (chmod 600) and set FIELD_MQTT_PASSWORD_FILE to its path"
            )
        if self.field_mqtt_ca_file is not None and "field_mqtt_port" not in self.model_fields_set:
            object.__setattr__(self, "field_mqtt_port", TLS_PORT)
        return self

    @property
    def field_tls(self) -> bool:
        """Return whether the sensor connects to the field broker with TLS."""
        return self.field_mqtt_ca_file is not None
