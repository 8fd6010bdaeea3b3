"""The modules' twin desired properties: one strict schema each, shared by the modules and `manifest validate`.

IoT Hub twin semantics apply: a property set to `null` in a patch is deleted, so it goes back to
its default; a property without a default (the sensor's `fieldTopic`) must be set. Values are
taken as JSON gives them, never coerced: `"250"` is not a number, `"no"` is not a boolean, and
`250.5` is not an integer of milliseconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.endpoints import INFERENCE, SENSOR
from edgefleet.field import FIELD_TOPIC_FILTER
from edgefleet.messages import BATCH_OVERHEAD_BYTES

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_UPSTREAM_MAX_BYTES",
    "DEFAULT_UPSTREAM_WINDOW_MS",
    "DESIRED_SCHEMAS",
    "LOG_LEVELS",
    "MAX_BATCH_BYTES",
    "MIN_BATCH_BYTES",
    "MIN_UPSTREAM_BYTES",
    "DesiredError",
    "DesiredProblem",
    "InferenceDesired",
    "SensorDesired",
    "check_topic_filter",
    "merge_desired",
    "parse_desired",
]

MIN_BATCH_BYTES = 1024
MAX_BATCH_BYTES = 256 * 1024  # IoT Hub's message size limit
DEFAULT_MAX_BATCH_BYTES = 32_000
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The inference module's upstream output: predictions of this many ms of rounds (or up to this many bytes
# of batch envelope before compression) go up as one compressed message (measured: docs/architecture.md).
DEFAULT_UPSTREAM_WINDOW_MS = 1000
DEFAULT_UPSTREAM_MAX_BYTES = 128 * 1024
MIN_UPSTREAM_BYTES = 4096

_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")
# Strict: JSON types as they are (no "250" -> 250, no "no" -> False, no 250.5 -> 250).
_STRICT = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


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


class SensorDesired(BaseModel):
    """The sensor's twin desired properties (the manifest's `sensor.properties.desired`)."""

    model_config = _STRICT

    batch_window_ms: int = Field(
        200, ge=0, le=60_000, alias="batchWindowMs", description="a JSON integer of milliseconds, 0 to 60000"
    )
    # Chosen by benchmarks/edge_throughput.py (--quick --repeats 4, interleaved runs): against 3,900
    # bytes (one 4 KB unit), sensor + inference + brokers take ~190 instead of ~305 ms of CPU per
    # 1,000 readings and the path carries ~35% more readings/s, because every message costs the
    # SDK, edgeHub and paho the same whatever its size. A batch fills in ~130 ms at 1,000
    # readings/s, inside `batchWindowMs`; 32,000 leaves room for properties within 8 IoT Hub units
    # should the raw telemetry route upstream be turned on.
    max_batch_bytes: int = Field(
        DEFAULT_MAX_BATCH_BYTES,
        ge=MIN_BATCH_BYTES,
        le=MAX_BATCH_BYTES,
        alias="maxBatchBytes",
        description=f"a JSON integer of bytes, {MIN_BATCH_BYTES} to {MAX_BATCH_BYTES}",
    )
    # Required: a sensor without a topic hears nothing. None only in `before_twin()`, never validated.
    field_topic: str | None = Field(
        None,
        alias="fieldTopic",
        validate_default=True,
        description=f'an MQTT topic filter string, e.g. "{FIELD_TOPIC_FILTER}"',
    )
    enabled: bool = Field(True, description="JSON true or false")

    @field_validator("field_topic")
    @classmethod
    def _topic(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("required: without it the sensor subscribes to nothing")
        return check_topic_filter(value)

    @classmethod
    def before_twin(cls) -> SensorDesired:
        """Return the values before any desired set is accepted: defaults, subscribed to nothing."""
        return cls.model_construct()

    def max_reading_bytes(self) -> int:
        """Return the largest encoded reading one batch can carry."""
        return self.max_batch_bytes - BATCH_OVERHEAD_BYTES


class InferenceDesired(BaseModel):
    """The inference module's twin desired properties (the manifest's `inference.properties.desired`)."""

    model_config = _STRICT

    expected_bundle_version: str | None = Field(
        None, alias="expectedBundleVersion", description="the bundle version string, or null for any"
    )
    poor_model_threshold: float = Field(
        1.0, ge=0, allow_inf_nan=False, alias="poorModelThreshold", description="a finite JSON number >= 0"
    )
    log_level: str = Field("INFO", alias="logLevel", description=f"one of {', '.join(LOG_LEVELS)}")
    upstream_window_ms: int = Field(
        DEFAULT_UPSTREAM_WINDOW_MS,
        ge=0,
        le=60_000,
        alias="upstreamWindowMs",
        description="a JSON integer of milliseconds, 0 (a message per processing round) to 60000",
    )
    # The batch envelope before compression: the compressed message is smaller still, so never above 256 KB.
    upstream_max_bytes: int = Field(
        DEFAULT_UPSTREAM_MAX_BYTES,
        ge=MIN_UPSTREAM_BYTES,
        le=MAX_BATCH_BYTES,
        alias="upstreamMaxBytes",
        description=f"a JSON integer of bytes, {MIN_UPSTREAM_BYTES} to {MAX_BATCH_BYTES}",
    )

    @field_validator("expected_bundle_version")
    @classmethod
    def _resolved(cls, value: str | None) -> str | None:
        if value is not None and _PLACEHOLDER.search(value):
            raise ValueError(
                f"{value!r} is an unexpanded placeholder; build the manifest with the bundle's version "
                "(edgefleet manifest build --var BUNDLE_VERSION=...) or remove the property"
            )
        return value or None

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"logLevel {value!r} is not one of {', '.join(LOG_LEVELS)}")
        return value.upper()


DesiredT = TypeVar("DesiredT", bound=BaseModel)

# Each module's desired-property schema, by module name; modules not named here go unchecked.
DESIRED_SCHEMAS: Final[Mapping[str, type[BaseModel]]] = MappingProxyType(
    {SENSOR.name: SensorDesired, INFERENCE.name: InferenceDesired}
)


@dataclass(frozen=True, slots=True)
class DesiredProblem:
    """One rejected desired property: its name as in the manifest, and what is wrong and how to fix it."""

    property: str
    message: str

    def __str__(self) -> str:
        return f"{self.property}: {self.message}"


class DesiredError(ValueError):
    """A desired set was rejected; `problems` names each bad property, `outcome` what the module does instead."""

    def __init__(self, problems: Sequence[DesiredProblem], outcome: str = "") -> None:
        self.problems = tuple(problems)
        self.outcome = outcome
        text = "desired properties rejected: " + "; ".join(map(str, self.problems))
        super().__init__(f"{text} ({outcome})" if outcome else text)


def merge_desired(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Return `current` with a twin patch applied: `null` deletes (back to default), `$`-keys are metadata."""
    merged = {key: value for key, value in current.items() if value is not None}
    for key, value in patch.items():
        if key.startswith("$"):  # $version, $metadata
            continue
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def parse_desired(schema: type[DesiredT], values: Mapping[str, Any]) -> DesiredT:
    """Validate a full desired set (a `null` property is absent); raise DesiredError naming each bad one."""
    present = merge_desired({}, values)
    try:
        return schema.model_validate(present)
    except ValidationError as err:
        raise DesiredError([_problem(schema, error) for error in err.errors()]) from None


def _problem(schema: type[BaseModel], error: Any) -> DesiredProblem:
    """Turn one pydantic error into the property's manifest name, the value given and the fix."""
    name = ".".join(str(part) for part in error["loc"]) or "desired"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        known = ", ".join(field.alias or key for key, field in schema.model_fields.items())
        return DesiredProblem(name, f"is not a desired property of this module (known: {known}); fix or remove it")
    field = next((f for key, f in schema.model_fields.items() if name in (key, f.alias)), None)
    if field is not None and field.alias:
        name = field.alias  # a default's error names the Python field
    if error.get("input") is not None and error["type"] != "missing":
        message = f"{message}, got {json.dumps(error['input'], default=repr)}"
    if field is not None and field.description:
        message = f"{message}; set {field.description}"
    return DesiredProblem(name, message)
