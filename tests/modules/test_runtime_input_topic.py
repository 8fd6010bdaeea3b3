"""Input topics read as the SDK reads them: a conformance table against azure-iot-device's own topic code."""

from __future__ import annotations

import pytest
from azure.iot.device import Message
from azure.iot.device.iothub.pipeline import mqtt_topic_iothub as sdk_topics

from modules.runtime.input_topic import parse_input_topic

pytestmark = pytest.mark.fast

BASE = "devices/edge1/modules/inference/inputs/"
# (input name, system properties set on the message, application properties)
CASES = [
    ("telemetry", {}, {}),
    ("telemetry", {"message_id": "m-1", "correlation_id": "c 2"}, {"kind": "reading"}),
    ("telemetry", {"content_type": "application/json", "content_encoding": "gzip"}, {"a b": "c&d=e", "plus": "1+1"}),
    ("input 2", {"user_id": "u/1"}, {"$.cdid": "edge1", "$.cmid": "sensor", "unicode": "häß ✓"}),
    ("telemetry", {}, {"empty": ""}),
]


def _sdk_reading(topic: str) -> tuple[str, dict[str, str]]:
    message = Message(b"{}")
    sdk_topics.extract_message_properties_from_topic(topic, message)
    return sdk_topics.get_input_name_from_topic(topic), dict(message.custom_properties)


@pytest.mark.parametrize(("input_name", "system", "custom"), CASES)
def test_an_input_topic_reads_to_the_input_and_properties_the_sdk_shows(input_name, system, custom):
    message = Message(b"{}")
    for name, value in system.items():
        setattr(message, name, value)
    message.custom_properties.update(custom)
    # edgeHub delivers with the properties the sending module's SDK put on its output topic.
    topic = sdk_topics.encode_message_properties_in_topic(message, BASE + input_name.replace(" ", "%20") + "/")

    parsed = parse_input_topic(topic)

    assert parsed is not None
    assert (parsed.input_name, parsed.properties) == _sdk_reading(topic)
    assert parsed.properties == custom


@pytest.mark.parametrize(
    "topic",
    [
        "$iothub/twin/res/200/?$rid=1",
        "$iothub/twin/PATCH/properties/desired/?$version=3",
        "$iothub/methods/POST/stats/?$rid=7",
        "devices/edge1/modules/inference/messages/devicebound/x",
        "devices/edge1/modules/inference/inputs",
    ],
)
def test_twin_method_and_other_topics_are_not_input_messages(topic):
    assert parse_input_topic(topic) is None
