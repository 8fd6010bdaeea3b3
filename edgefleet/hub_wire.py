"""The local IoT Hub's wire form: how a routed `$upstream` message travels to the sink over MQTT.

Wire form, one MQTT message per routed message, QoS 1:
`devices/{device}/modules/{module}/messages/{kind}/{properties}` where `kind` is `events`
(device-to-cloud telemetry) or `twinChangeNotifications`, and `properties` encodes the output
(`$.on`), the system properties (edgeHub's `$.ct`, `$.ce`, ... wire names) and the application
properties exactly as a module's own event topic does. The body is the message body, untouched.
The stand-in writes it (`edgehub.hub.HubPublisher`); the sink and the dashboard read it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator

from edgefleet.errors import EdgefleetError
from edgefleet.routes import Message
from edgefleet.topics import (
    INCOMING_SYSTEM_PROPERTIES,
    OUTPUT_NAME_KEY,
    TopicError,
    encode_properties,
    parse_event_topic,
)

__all__ = [
    "HUB_DASHBOARD_USER",
    "HUB_PUBLISHER_USER",
    "HUB_SUBSCRIPTION",
    "KEEPALIVE_S",
    "HubAddress",
    "HubAddressError",
    "format_hub_topic",
    "parse_hub_address",
    "parse_hub_message",
]

HUB_SUBSCRIPTION = "devices/+/modules/+/messages/#"
_KIND_SEGMENTS = {"telemetry": "events", "twin_change_notification": "twinChangeNotifications"}
_SEGMENT_KINDS = {segment: kind for kind, segment in _KIND_SEGMENTS.items()}
_SYSTEM_WIRE_NAMES = {name: wire for wire, name in INCOMING_SYSTEM_PROPERTIES.items()}
KEEPALIVE_S = 30
# The hub broker's identities are their roles (edgehub.hub_auth): the stand-in publishes upstream
# messages; the dashboard (like every user but the stand-in) only reads them.
HUB_PUBLISHER_USER = "edgefleet-edgehub"
HUB_DASHBOARD_USER = "edgefleet-dashboard"


class HubAddressError(EdgefleetError):
    """Raise when a hub address is not HOST:PORT."""


def parse_hub_address(text: str) -> tuple[str, int]:
    """Return (host, port) from `HOST:PORT`, or raise saying how to write it."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HubAddressError(f"{text!r} is not HOST:PORT; write e.g. sink:1883 or 127.0.0.1:1883")
    return host, int(port_text)


def _hub_address_setting(value: object) -> object:
    """Turn a `HOST:PORT` setting into (host, port); pass anything else on for pydantic to check."""
    if isinstance(value, str):
        try:
            return parse_hub_address(value)
        except HubAddressError as err:
            raise ValueError(str(err)) from None
    return value


# A settings field holding a hub broker address, given as HOST:PORT.
HubAddress = Annotated[tuple[str, int], BeforeValidator(_hub_address_setting)]


def format_hub_topic(message: Message) -> str:
    """Return the hub topic that carries a routed message's identity, output and properties."""
    segment = _KIND_SEGMENTS.get(message.kind, "events")
    pairs: list[tuple[str, str]] = []
    if message.output is not None:
        pairs.append((OUTPUT_NAME_KEY, message.output))
    for name, value in message.system_properties.items():
        wire = _SYSTEM_WIRE_NAMES.get(name)
        if wire is not None and value is not None:
            pairs.append((wire, value))
    pairs.extend(message.properties.items())
    module = message.connection_module_id or "$device"
    return f"devices/{message.connection_device_id}/modules/{module}/messages/{segment}/{encode_properties(pairs)}"


def parse_hub_message(topic: str, payload: bytes) -> Message:
    """Rebuild the routed message from a hub topic and body, or raise TopicError."""
    parts = topic.split("/", 6)
    kind = _SEGMENT_KINDS.get(parts[5]) if len(parts) > 5 else None
    if kind is None:
        raise TopicError(f"not a hub message topic: {topic!r}")
    # Same shape as a module's event topic once the kind segment reads `events`.
    event = parse_event_topic("/".join([*parts[:5], "events", *parts[6:]]))
    return Message(
        connection_device_id=event.device_id,
        connection_module_id=None if event.module_id == "$device" else event.module_id,
        output=event.output,
        properties=event.properties,
        system_properties=event.system_properties,
        body=payload,
        kind=kind,  # type: ignore[arg-type]  # one of MessageKind by construction
    )
