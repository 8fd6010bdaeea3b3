"""The MQTT topics that Azure IoT SDK modules use with edgeHub, parsed and formatted.

Pure functions, no I/O. Topic shapes (azure-iot-device 2.x, `mqtt_topic_iothub.py`, and the
IoT Hub MQTT documentation):

- module events: `devices/{device}/modules/{module}/messages/events/{props}`, where `props` is
  a URL-encoded `k=v&k=v` list: system properties first (`$.on` output name, `$.mid`, `$.cid`,
  `$.uid`, `$.ct`, `$.ce`, `$.ifid`, `$.exp`), then the application properties. Keys and
  values are percent-encoded with no safe characters (`/` becomes `%2F`, `$` becomes `%24`);
  `+` is a literal plus, never a space.
- module inputs: `devices/{device}/modules/{module}/inputs/{input}/{props}`; the SDK takes the
  input name from the 6th segment and the properties from the 7th.
- twin: requests `$iothub/twin/GET/?$rid={rid}` and `$iothub/twin/PATCH/properties/reported/?$rid={rid}`,
  responses `$iothub/twin/res/{status}/?$rid={rid}[&$version={n}]`, desired-property pushes
  `$iothub/twin/PATCH/properties/desired/?$version={n}`.
- direct methods: requests `$iothub/methods/POST/{name}/?$rid={rid}`, responses
  `$iothub/methods/res/{status}/?$rid={rid}`.

Twin and method topics carry no device or module identity: which module a request came from
is known only from the connection it arrived on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote

from edgefleet.errors import EdgefleetError

__all__ = [
    "EVENTS_SUBSCRIPTION",
    "METHOD_RESPONSES_SUBSCRIPTION",
    "TWIN_REQUEST_SUBSCRIPTIONS",
    "MethodResponse",
    "ModuleEvent",
    "TopicError",
    "TwinRequest",
    "encode_properties",
    "format_input_topic",
    "method_request_topic",
    "parse_event_topic",
    "parse_method_response_topic",
    "parse_properties",
    "parse_twin_request_topic",
    "twin_desired_patch_topic",
    "twin_response_topic",
]

# What the router subscribes to on a module's broker.
EVENTS_SUBSCRIPTION = "devices/+/modules/+/messages/events/#"
TWIN_REQUEST_SUBSCRIPTIONS = ("$iothub/twin/GET/#", "$iothub/twin/PATCH/properties/reported/#")
METHOD_RESPONSES_SUBSCRIPTION = "$iothub/methods/res/#"

# Wire names of system properties on messages a module sends, mapped to the names routes query
# (`$contentType`, ...). These follow edgeHub's own map (Microsoft.Azure.Devices.Edge.Hub.Core
# SystemProperties.IncomingSystemPropertiesMap); `$.on` is the output and kept apart.
OUTPUT_NAME_KEY = "$.on"
INCOMING_SYSTEM_PROPERTIES: Mapping[str, str] = {
    "$.mid": "messageId",
    "$.cid": "correlationId",
    "$.uid": "userId",
    "$.to": "to",
    "$.ct": "contentType",
    "$.ce": "contentEncoding",
    "$.exp": "absolute-expiry-time",
    "$.schema": "messageSchema",
    "$.ifid": "interfaceId",
}
# The connection identity comes from the connection, never from what the sender wrote.
IGNORED_INCOMING_KEYS = frozenset({"$.cdid", "$.cmid"})
# System properties edgeHub puts on messages it delivers to a module input, in the order of its
# SystemProperties.OutgoingSystemPropertiesMap (IoT Edge 1.4+): the sender's message id,
# correlation id, user id, `to`, expiry, content type/encoding and schema, plus the connection
# identity edgeHub adds. The SDK turns `$.mid`, `$.cid`, `$.uid`, `$.ct`, `$.ce`, `$.exp` into
# message fields and shows the rest (`$.cdid`, `$.cmid`, `$.schema`) in `custom_properties`.
# The output name (`$.on`) is not forwarded: the input name replaces it.
OUTGOING_SYSTEM_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("absolute-expiry-time", "$.exp"),
    ("correlationId", "$.cid"),
    ("messageId", "$.mid"),
    ("to", "$.to"),
    ("userId", "$.uid"),
    ("contentType", "$.ct"),
    ("contentEncoding", "$.ce"),
    ("messageSchema", "$.schema"),
    ("connectionDeviceId", "$.cdid"),
    ("connectionModuleId", "$.cmid"),
)

_EVENTS_MARKER = "/messages/events"


class TopicError(EdgefleetError):
    """Raise when a topic does not have the shape this function expects."""


@dataclass(frozen=True, slots=True)
class ModuleEvent:
    """A message a module sent, as its topic describes it."""

    device_id: str
    module_id: str
    output: str | None
    system_properties: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TwinRequest:
    """A module's twin request: read the twin, or patch its reported properties."""

    kind: Literal["get", "patch_reported"]
    rid: str


@dataclass(frozen=True, slots=True)
class MethodResponse:
    """A module's answer to a direct method call."""

    status: int
    rid: str


def _quote(text: str) -> str:
    """Percent-encode everything but unreserved characters, as the SDK does."""
    return quote(text, safe="")


def parse_properties(text: str) -> list[tuple[str, str]]:
    """Split a `k=v&k=v` property string into decoded pairs, in order (a bare key gets "")."""
    pairs: list[tuple[str, str]] = []
    if not text:
        return pairs
    for entry in text.split("&"):
        if not entry:
            continue
        key, sep, value = entry.partition("=")
        # unquote, not unquote_plus: the SDK encodes a space as %20 and sends '+' as itself.
        pairs.append((unquote(key), unquote(value) if sep else ""))
    return pairs


def encode_properties(pairs: Iterable[tuple[str, str]]) -> str:
    """Join pairs into the SDK's `k=v&k=v` form, percent-encoding keys and values."""
    return "&".join(f"{_quote(key)}={_quote(value)}" for key, value in pairs)


def parse_event_topic(topic: str) -> ModuleEvent:
    """Parse `devices/{d}/modules/{m}/messages/events/{props}` into identity, output and properties."""
    parts = topic.split("/", 6)
    if (
        len(parts) < 6
        or parts[0] != "devices"
        or parts[2] != "modules"
        or parts[4] != "messages"
        or parts[5] != "events"
        or not parts[1]
        or not parts[3]
    ):
        raise TopicError(f"not a module event topic: {topic!r}")
    # Device and module ids are never URL-encoded by the SDK (IoT Hub does not decode them).
    device_id, module_id = parts[1], parts[3]
    output: str | None = None
    system: dict[str, str] = {}
    properties: dict[str, str] = {}
    for key, value in parse_properties(parts[6] if len(parts) > 6 else ""):
        if key == OUTPUT_NAME_KEY:
            output = value or None
        elif key in INCOMING_SYSTEM_PROPERTIES:
            system[INCOMING_SYSTEM_PROPERTIES[key]] = value
        elif key in IGNORED_INCOMING_KEYS:
            continue
        else:
            properties[key] = value
    return ModuleEvent(device_id, module_id, output, system, properties)


def format_input_topic(
    device_id: str,
    module_id: str,
    input_name: str,
    properties: Mapping[str, str] | None = None,
    system_properties: Mapping[str, str] | None = None,
) -> str:
    """Return the topic that delivers a message to a module input, with its properties encoded."""
    if not device_id or not module_id or not input_name or "/" in device_id or "/" in module_id:
        raise TopicError(f"cannot build an input topic for {device_id!r}/{module_id!r}/{input_name!r}")
    system = system_properties or {}
    pairs = [(wire, system[name]) for name, wire in OUTGOING_SYSTEM_PROPERTIES if system.get(name) is not None]
    pairs += list((properties or {}).items())
    return f"devices/{device_id}/modules/{module_id}/inputs/{_quote(input_name)}/{encode_properties(pairs)}"


def _query(topic: str) -> dict[str, str]:
    """Return the `?$rid=..&$version=..` part of a `$iothub` topic as a dict (keys keep their `$`)."""
    _, sep, query = topic.partition("?")
    return dict(parse_properties(query)) if sep else {}


def parse_twin_request_topic(topic: str) -> TwinRequest:
    """Parse a module's twin GET or reported-properties PATCH topic."""
    path = topic.partition("?")[0]
    rid = _query(topic).get("$rid")
    if rid is None:
        raise TopicError(f"twin request without $rid: {topic!r}")
    if path in ("$iothub/twin/GET/", "$iothub/twin/GET"):
        return TwinRequest("get", rid)
    if path in ("$iothub/twin/PATCH/properties/reported/", "$iothub/twin/PATCH/properties/reported"):
        return TwinRequest("patch_reported", rid)
    raise TopicError(f"unknown twin request: {topic!r}")


def twin_response_topic(status: int, rid: str, version: int | None = None) -> str:
    """Return the topic answering twin request `rid` with an HTTP-like status."""
    topic = f"$iothub/twin/res/{int(status)}/?$rid={_quote(rid)}"
    if version is not None:
        topic += f"&$version={int(version)}"
    return topic


def twin_desired_patch_topic(version: int) -> str:
    """Return the topic that pushes a desired-properties patch of this `$version`."""
    return f"$iothub/twin/PATCH/properties/desired/?$version={int(version)}"


def method_request_topic(name: str, rid: str) -> str:
    """Return the topic that invokes direct method `name` with request id `rid`."""
    if not name:
        raise TopicError("a direct method needs a name")
    return f"$iothub/methods/POST/{_quote(name)}/?$rid={_quote(rid)}"


def parse_method_response_topic(topic: str) -> MethodResponse:
    """Parse `$iothub/methods/res/{status}/?$rid={rid}`."""
    parts = topic.partition("?")[0].split("/")
    rid = _query(topic).get("$rid")
    if len(parts) < 4 or parts[:3] != ["$iothub", "methods", "res"] or rid is None:
        raise TopicError(f"not a method response topic: {topic!r}")
    try:
        status = int(unquote(parts[3]))
    except ValueError as err:
        raise TopicError(f"method response with a non-numeric status: {topic!r}") from err
    return MethodResponse(status, rid)
