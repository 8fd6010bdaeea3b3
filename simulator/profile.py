"""The simulator profile: which devices, how fast, which faults and drift, and where to publish.

A profile is a YAML or JSON file validated here once; the hot path never touches pydantic.
Device ids follow `generate-history` (`dev-00000`, `dev-00001`, …): device types that share an
id prefix continue one numbering, so a fleet of 150 + 50 devices with prefix `dev-` is exactly
`edgefleet generate-history --devices 200`, and with the same seed the trained bundle's device
models describe the simulated devices.
"""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from edgefleet.field import FIELD_TOPIC_TEMPLATE
from edgefleet.secret_files import PasswordFile, check_ca_file
from simulator.errors import ProfileError
from simulator.physics import FEATURES, RELATION_KINDS

__all__ = [
    "DEFAULT_START_TS",
    "DEMO_PROFILE",
    "DeviceType",
    "DriftEvent",
    "FaultRates",
    "MqttSettings",
    "SimulatorProfile",
    "assign_device_ids",
    "load_profile",
    "parse_profile",
    "with_overrides",
]

DEMO_PROFILE = Path(__file__).resolve().with_name("profiles") / "demo.yaml"
# generate-history's default `end_ts`: a simulated stream starting here continues that history.
DEFAULT_START_TS = datetime(2026, 11, 1, tzinfo=UTC)
# paho 1.6 numbers QoS 1 messages with 16-bit ids and reuses ids beyond 65,535 pending ones.
PAHO_MESSAGE_IDS = 65_535
MAX_DEVICES = 1_000_000
_TOPIC_WILDCARDS = ("+", "#")

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    """Base of every profile section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Strict):
    """Where and how the simulated devices publish."""

    host: str = Field("127.0.0.1", min_length=1, description="broker host name or IP address")
    port: int = Field(1883, ge=1, le=65535, description="broker TCP port (1883 plain, 8883 TLS by convention)")
    qos: Literal[0, 1] = Field(1, description="0 sends at most once; 1 waits for the broker's acknowledgement")
    client_id: str = Field("edgefleet-simulator", min_length=1, max_length=128, description="MQTT client id")
    topic_template: str = Field(
        FIELD_TOPIC_TEMPLATE, description="publish topic; must contain {device_id} and no + or #"
    )
    tls_ca_file: Path | None = Field(
        None, description="CA certificate (PEM) that signed the broker's certificate; setting it turns TLS on"
    )
    username: str | None = Field(
        None, min_length=1, description="broker user name (the field broker's gateway identity, e.g. gateway)"
    )
    password: SecretStr | None = Field(None, description="broker password (needs username); prefer password_file")
    password_file: PasswordFile | None = Field(
        None, description="file holding the broker password (chmod 600), read once at start; needs username"
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds")
    max_queued_messages: int = Field(
        20_000,
        ge=1,
        le=60_000,
        description=f"messages paho may hold unacknowledged; stay below its {PAHO_MESSAGE_IDS:,} message ids",
    )
    max_inflight_messages: int = Field(
        50, ge=1, le=1000, description="QoS 1 messages on the wire awaiting PUBACK (paho scans these per ack)"
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="how long to wait for the first connection")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="how long to wait at the end for the broker to acknowledge what was sent"
    )

    @field_validator("topic_template")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if "{device_id}" not in value:
            raise ValueError(f"must contain {{device_id}}, e.g. {FIELD_TOPIC_TEMPLATE!r}")
        try:
            topic = value.format(device_id="dev-00000")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"only {{device_id}} may be substituted ({err!r}); write a literal brace as {{{{") from err
        if any(wildcard in topic for wildcard in _TOPIC_WILDCARDS):
            raise ValueError("a publish topic cannot contain the wildcards + or #")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> MqttSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set mqtt.password or mqtt.password_file (--password-file), not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError(
                "a password is set but no user name: add mqtt.username (--username), e.g. gateway, "
                "the field broker's identity for a publisher of many devices"
            )
        if self.tls_ca_file is not None:
            try:
                check_ca_file(self.tls_ca_file)
            except ValueError as err:
                raise ValueError(f"tls_ca_file: {err} (relative paths start at the profile)") from None
        return self

    def broker_password(self) -> SecretStr | None:
        """Return the password to log in with: from password_file, or password."""
        return self.password_file.password if self.password_file is not None else self.password


class DeviceType(_Strict):
    """A group of identical devices: how many, which sensors, how often they report."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="type name")
    count: int = Field(ge=1, le=MAX_DEVICES, description="number of devices of this type")
    id_prefix: str = Field(
        "dev-",
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]*$",
        description="device ids are <id_prefix><5-digit number>; types sharing a prefix continue one numbering",
    )
    features: tuple[str, ...] = Field(
        FEATURES, min_length=1, description=f"features the device measures, a subset of {', '.join(FEATURES)}"
    )
    relation_kind: Literal["linear", "saturating", "threshold"] | None = Field(
        None, description=f"override the hidden label relation ({', '.join(RELATION_KINDS)}); null keeps the seeded one"
    )
    noise_scale: float = Field(1.0, ge=0.0, le=100.0, description="multiplies each device's label noise")
    rate_per_s: float = Field(1.0, gt=0.0, le=10_000.0, description="readings per second per device")

    @field_validator("features")
    @classmethod
    def _check_features(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in FEATURES]
        if unknown:
            raise ValueError(f"unknown feature(s) {', '.join(map(repr, unknown))}; choose from {', '.join(FEATURES)}")
        if len(set(value)) != len(value):
            raise ValueError("list each feature once")
        return value


class FaultRates(_Strict):
    """How often devices misbehave: probabilities per reading (per device for silence)."""

    stuck_rate: Probability = Field(0.0, description="per reading: one feature repeats its last value for a while")
    stuck_readings: int = Field(20, ge=1, le=100_000, description="readings a stuck feature keeps its value")
    spike_rate: Probability = Field(0.0, description="per reading: one feature is multiplied by spike_factor")
    spike_factor: float = Field(10.0, gt=1.0, le=1e6, description="how much a spike multiplies the value")
    nan_rate: Probability = Field(0.0, description="per reading: one feature is sent as NaN (the edge dead-letters it)")
    missing_feature_rate: Probability = Field(0.0, description="per reading: one feature key is left out")
    duplicate_rate: Probability = Field(0.0, description="per reading: the message is sent twice")
    reorder_rate: Probability = Field(0.0, description="per reading: it is sent after the device's next reading")
    burst_rate: Probability = Field(0.0, description="per reading: the device buffers and sends burst_readings at once")
    burst_readings: int = Field(5, ge=2, le=10_000, description="readings sent together in a burst")
    silent_device_rate: Probability = Field(0.0, description="per device: it stops sending for silent_duration_s")
    silent_duration_s: float = Field(30.0, gt=0.0, description="how long a silent device sends nothing")


class DriftEvent(_Strict):
    """At one moment, some devices drift: their hidden label relation changes, or their features move."""

    at_s: float | None = Field(None, ge=0.0, description="simulated seconds after the start")
    at_fraction: float | None = Field(None, ge=0.0, le=1.0, description="fraction of duration_s (needs a duration)")
    devices: tuple[str, ...] | None = Field(None, min_length=1, description="explicit device ids that drift")
    device_fraction: float | None = Field(None, gt=0.0, le=1.0, description="share of the candidates that drift")
    device_types: tuple[str, ...] | None = Field(
        None, min_length=1, description="limit the candidates to these device types (default: all)"
    )
    kind: Literal["relation", "features"] = Field(
        "relation",
        description="relation: the hidden label relation changes (concept drift); "
        "features: the feature values move by feature_shift and the relation stays (feature drift)",
    )
    feature_shift: dict[str, float] | None = Field(
        None,
        description="kind features: added to each named feature from the event on, in its own units "
        "(summed over a device's events, not clipped); the label uses the shifted features, "
        "even one the device does not measure",
    )

    @field_validator("feature_shift")
    @classmethod
    def _check_shift(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("name at least one feature to shift, e.g. {temperature_c: 8.0}")
        unknown = [name for name in value if name not in FEATURES]
        if unknown:
            raise ValueError(f"unknown feature(s) {', '.join(map(repr, unknown))}; choose from {', '.join(FEATURES)}")
        bad = [name for name, shift in value.items() if not math.isfinite(shift) or shift == 0.0]
        if bad:
            raise ValueError(
                f"{', '.join(bad)}: a shift must be a finite number other than 0 (leave out a feature that stays)"
            )
        return value

    @model_validator(mode="after")
    def _check_choice(self) -> DriftEvent:
        if (self.at_s is None) == (self.at_fraction is None):
            raise ValueError("give exactly one of at_s (seconds after start) or at_fraction (of duration_s)")
        if (self.devices is None) == (self.device_fraction is None):
            raise ValueError("give exactly one of devices (a list of ids) or device_fraction (e.g. 0.1)")
        if self.kind == "features" and self.feature_shift is None:
            raise ValueError("kind: features needs feature_shift, e.g. feature_shift: {temperature_c: 8.0}")
        if self.kind == "relation" and self.feature_shift is not None:
            raise ValueError("feature_shift needs kind: features (a relation event changes the relation, not features)")
        return self


class SimulatorProfile(_Strict):
    """A whole simulation: fleet, pacing, faults, drift and the MQTT connection."""

    seed: int = Field(0, ge=0, description="fleet seed; use generate-history's --seed so trained models match")
    start_ts: datetime | Literal["now"] = Field(
        DEFAULT_START_TS, description="timestamp of simulated second 0 (UTC, with Z), or 'now'"
    )
    duration_s: float | None = Field(60.0, gt=0.0, description="simulated seconds to run; null runs until stopped")
    rate_cap_per_s: float | None = Field(
        None, gt=0.0, description="cap on the fleet's total readings/s; device rates scale down to fit"
    )
    speed: float = Field(
        1.0, ge=0.0, description="simulated seconds per wall-clock second; 0 sends as fast as the cap allows"
    )
    precision_digits: int = Field(4, ge=1, le=17, description="significant digits of features and labels")
    device_types: tuple[DeviceType, ...] = Field(min_length=1, description="the fleet, one entry per device type")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    faults: FaultRates = Field(default_factory=FaultRates)
    drift: tuple[DriftEvent, ...] = Field((), description="concept and feature drift events")

    @field_validator("start_ts", mode="before")
    @classmethod
    def _parse_start(cls, value: object) -> datetime | str:
        # One clear message instead of pydantic's two (one per member of the union).
        example = "e.g. 2026-11-01T00:00:00Z, or 'now'"
        if value == "now":
            return "now"
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(f"is not an ISO-8601 time ({example})") from None
        if not isinstance(value, datetime):
            raise ValueError(f"needs a date and a time in UTC ({example})")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("has no timezone: write UTC with a Z, e.g. 2026-11-01T00:00:00Z")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _check_fleet(self) -> SimulatorProfile:
        names = [device_type.name for device_type in self.device_types]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"device type names must be unique; repeated: {', '.join(duplicated)}")
        total = sum(device_type.count for device_type in self.device_types)
        if total > MAX_DEVICES:
            raise ValueError(f"{total:,} devices; at most {MAX_DEVICES:,} fit in one simulator process")
        ids = [device_id for group in assign_device_ids(self.device_types) for device_id in group]
        if len(set(ids)) != len(ids):
            raise ValueError("two device types produce the same device ids: give them different id_prefix values")
        known = set(ids)
        for index, event in enumerate(self.drift):
            where = f"drift[{index}]"
            if event.at_fraction is not None and self.duration_s is None:
                raise ValueError(f"{where}.at_fraction needs duration_s; use at_s for a run without a duration")
            if event.at_s is not None and self.duration_s is not None and event.at_s >= self.duration_s:
                raise ValueError(f"{where}.at_s={event.at_s:g} is not before the end (duration_s={self.duration_s:g})")
            for type_name in event.device_types or ():
                if type_name not in names:
                    raise ValueError(f"{where}.device_types: no device type {type_name!r}; types: {', '.join(names)}")
            unknown = [device_id for device_id in event.devices or () if device_id not in known]
            if unknown:
                raise ValueError(
                    f"{where}.devices: unknown id(s) {', '.join(unknown[:5])}; ids run {ids[0]} .. {ids[-1]}"
                )
        return self

    @property
    def total_rate_per_s(self) -> float:
        """Return the fleet's readings/s before the rate cap."""
        return sum(device_type.count * device_type.rate_per_s for device_type in self.device_types)

    @property
    def device_count(self) -> int:
        """Return how many devices the profile simulates."""
        return sum(device_type.count for device_type in self.device_types)


def assign_device_ids(device_types: Sequence[DeviceType]) -> list[list[str]]:
    """Return each type's device ids; types sharing a prefix continue one numbering (`dev-00000` …)."""
    next_number: dict[str, int] = {}
    groups = []
    for device_type in device_types:
        first = next_number.get(device_type.id_prefix, 0)
        # Same format as simulator.physics.device_ids, so prefix "dev-" reproduces generate-history's ids.
        groups.append([f"{device_type.id_prefix}{i:05d}" for i in range(first, first + device_type.count)])
        next_number[device_type.id_prefix] = first + device_type.count
    return groups


def with_overrides(profile: SimulatorProfile, **changes: Any) -> SimulatorProfile:
    """Return `profile` with top-level fields (or `mqtt={...}` keys) replaced, validated again."""
    data = profile.model_dump()
    mqtt_changes = changes.pop("mqtt", None) or {}
    data.update({key: value for key, value in changes.items()})
    data["mqtt"] = {**data["mqtt"], **mqtt_changes}
    return parse_profile(data, source="overrides")


def load_profile(path: Path | str) -> SimulatorProfile:
    """Read and validate a YAML or JSON profile; raise ProfileError saying what to fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(
            f"simulator profile not found: {path} (start from {DEMO_PROFILE.relative_to(DEMO_PROFILE.parents[2])})"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"cannot read simulator profile {path}: {err}") from err
    try:
        # JSON is YAML too, but json gives better messages for a .json file.
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ProfileError(f"{path}: not valid YAML{where}: {problem}") from None
    if isinstance(data, dict):
        data = _resolve_paths(data, path.parent)
    return parse_profile(data, source=str(path))


def parse_profile(data: object, source: str = "profile") -> SimulatorProfile:
    """Validate an already-parsed profile mapping; raise ProfileError saying what to fix."""
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else type(data).__name__
        raise ProfileError(f"{source}: a profile is a mapping of settings (seed, device_types, …), got {kind}")
    try:
        return SimulatorProfile.model_validate(data)
    except ValidationError as err:
        lines = _describe_errors(err.errors())
        raise ProfileError(
            f"invalid simulator profile {source}:\n" + "\n".join(f"  {line}" for line in lines)
        ) from None


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make a relative `mqtt.tls_ca_file` or `mqtt.password_file` relative to the profile's directory."""
    mqtt = data.get("mqtt")
    if not isinstance(mqtt, dict):
        return data
    resolved = dict(mqtt)
    for key in ("tls_ca_file", "password_file"):
        if isinstance(mqtt.get(key), str):
            path = Path(mqtt[key]).expanduser()
            resolved[key] = str(path if path.is_absolute() else base / path)
    return {**data, "mqtt": resolved}


def _location(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "profile"


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    """Return the profile models inside an annotation (unwrapping Optional, unions and tuples)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple, Annotated):
        return [cls for arg in typing.get_args(annotation) for cls in _model_classes(arg)]
    return []


def _walk(loc: Sequence[int | str]) -> tuple[type[BaseModel], str | None]:
    """Return the model that holds the last known key of `loc`, and that key (None: the model itself)."""
    model: type[BaseModel] = SimulatorProfile
    key: str | None = None
    for part in loc:
        if isinstance(part, int):
            continue
        if key is not None:
            inner = _model_classes(model.model_fields[key].annotation)
            if not inner:
                break  # a union tag (e.g. `datetime`) below a plain field
            model, key = inner[0], None
        if part not in model.model_fields:
            break  # an unknown key: report it against the model that lacks it
        key = part
    return model, key


def _closest(unknown: str, allowed: Sequence[str]) -> str | None:
    """Return the allowed key the user most likely meant."""
    prefixed = [key for key in allowed if key.startswith(unknown) or unknown.startswith(key)]
    close = prefixed or difflib.get_close_matches(unknown, allowed, n=1, cutoff=0.5)
    return close[0] if close else None


def _describe_errors(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """Describe each error, leaving out a container's knock-on complaints about an item that failed."""
    nested = {tuple(item["loc"][:i]) for item in items for i in range(1, len(item["loc"]))}
    return [
        _describe_error(item) for item in items if not (item["type"] == "too_short" and tuple(item["loc"]) in nested)
    ]


def _describe_error(item: Mapping[str, Any]) -> str:
    """Turn one pydantic error into `where: what is wrong; what the setting means`."""
    loc = tuple(item["loc"])
    where = _location(loc)
    model, key = _walk(loc)
    if item["type"] == "extra_forbidden":
        allowed = list(model.model_fields)
        close = _closest(str(loc[-1]), allowed)
        hint = f"did you mean {close!r}? " if close else ""
        return f"{where}: unknown key; {hint}allowed keys: {', '.join(allowed)}"
    message = str(item["msg"]).removeprefix("Value error, ")
    description = model.model_fields[key].description if key is not None else None
    if item["type"] == "missing":
        return f"{where}: required" + (f" ({description})" if description else "")
    shown = ""
    if "input" in item and key != "password" and not isinstance(item["input"], Mapping | list | tuple):
        value = item["input"]
        if not (isinstance(value, float) and math.isnan(value)):
            shown = f" (got {value!r})"
    return f"{where}: {message}{shown}" + (f"; {key}: {description}" if description else "")
