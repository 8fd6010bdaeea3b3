"""edgeHub's MQTT topic for a message on a module input: its input name and application properties.

edgeHub delivers a message routed to a module's input on
`devices/<device>/modules/<module>/inputs/<input>/<property bag>`, the bag being
`key=value` pairs joined by `&`, each side URL-encoded. System properties (`$.mid`, `$.cid`,
`$.uid`, `$.ct`, `$.ce`, `$.exp`, `$.to`, `iothub-ack`) are the message's metadata, not its
application properties; every other key (edgeHub's `$.cdid` / `$.cmid` included) is one, as the
SDK's `Message.custom_properties` shows it. `+` stays a plus: the SDK encodes a space as `%20`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["InputTopic", "parse_input_topic"]

# Keys the SDK keeps as message metadata (azure-iot-device, iothub/pipeline/mqtt_topic_iothub.py).
SYSTEM_PROPERTIES = frozenset({"$.mid", "$.cid", "$.uid", "$.ct", "$.ce", "$.exp", "$.to", "iothub-ack"})
_INPUT_PARTS = 6  # devices / <device> / modules / <module> / inputs / <input>


@dataclass(frozen=True, slots=True)
class InputTopic:
    """Where an input message came in: the input name and its application properties."""

    input_name: str
    properties: dict[str, str]


def parse_input_topic(topic: str) -> InputTopic | None:
    """Return the input and application properties of a module-input topic; None for any other topic."""
    parts = topic.split("/", _INPUT_PARTS)
    if len(parts) < _INPUT_PARTS or parts[0] != "devices" or parts[2] != "modules" or parts[4] != "inputs":
        return None
    properties: dict[str, str] = {}
    bag = parts[6] if len(parts) > _INPUT_PARTS else ""
    for pair in bag.split("&") if bag else ():
        raw_key, _, raw_value = pair.partition("=")
        key = unquote(raw_key)
        if key not in SYSTEM_PROPERTIES:
            properties[key] = unquote(raw_value)
    return InputTopic(unquote(parts[5]), properties)
