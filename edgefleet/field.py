"""The field side of the edge: the MQTT topics field devices publish their readings on.

A device publishes to `FIELD_TOPIC_TEMPLATE` with its id filled in; the sensor module subscribes
to the deployment's `fieldTopic` (the shipped template uses `FIELD_TOPIC_FILTER`). The simulator,
the sensor's examples and the CLI take their defaults from here.
"""

from __future__ import annotations

from typing import Final

__all__ = ["FIELD_TOPIC_FILTER", "FIELD_TOPIC_TEMPLATE", "field_topic"]

FIELD_TOPIC_TEMPLATE: Final = "fleet/{device_id}/telemetry"
FIELD_TOPIC_FILTER: Final = FIELD_TOPIC_TEMPLATE.replace("{device_id}", "+")


def field_topic(device_id: str) -> str:
    """Return the topic `device_id` publishes its readings on."""
    return FIELD_TOPIC_TEMPLATE.format(device_id=device_id)
