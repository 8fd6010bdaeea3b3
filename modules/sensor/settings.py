"""Typed settings of the sensor module, validated once at start; twin desired properties on top."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edgefleet.field import FIELD_TOPIC_FILTER
from edgefleet.messages import BATCH_OVERHEAD_BYTES
from modules.runtime import ModuleSettings

MIN_BATCH_BYTES = 1024
MAX_BATCH_BYTES = 256 * 1024  # IoT Hub's message size limit


def _env(name: str) -> Any:
    return AliasChoices(name.lower(), name)


def check_topic_filter(topic: str) -> str:
    """Return an MQTT topic filter, or raise saying what is wrong with it."""
    if not topic or len(topic.encode()) > 65535:
        raise ValueError(f"the field topic must be 1 to 65,535 bytes, e.g. {FIELD_TOPIC_FILTER}")
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"field topic {topic!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"field topic {topic!r}: '+' must be a whole level, e.g. {FIELD_TOPIC_FILTER}")
    return topic


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

    @model_validator(mode="after")
    def _credentials_together(self) -> SensorSettings:
        if (self.field_mqtt_user is None) != (self.field_mqtt_password is None):
            raise ValueError("Set FIELD_MQTT_USER and FIELD_MQTT_PASSWORD together")
        return self


class SensorDesired(BaseModel):
    """The sensor's twin desired properties (the manifest's `sensor.properties.desired`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    batch_window_ms: int = Field(200, ge=0, le=60_000, alias="batchWindowMs")
    max_batch_bytes: int = Field(3900, ge=MIN_BATCH_BYTES, le=MAX_BATCH_BYTES, alias="maxBatchBytes")
    field_topic: str | None = Field(None, alias="fieldTopic")
    enabled: bool = True

    @field_validator("field_topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        return None if value is None else check_topic_filter(value)

    def max_reading_bytes(self) -> int:
        """Return the largest encoded reading one batch can carry."""
        return self.max_batch_bytes - BATCH_OVERHEAD_BYTES
