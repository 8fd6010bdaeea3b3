"""Topic parsing and formatting, checked against the azure-iot-device SDK's own topic code."""

from __future__ import annotations

import pytest
from azure.iot.device import Message as SdkMessage
from azure.iot.device.iothub.pipeline import mqtt_topic_iothub as sdk

from edgefleet.topics import (
    TopicError,
    encode_properties,
    format_input_topic,
    method_request_topic,
    parse_event_topic,
    parse_method_response_topic,
    parse_properties,
    parse_twin_request_topic,
    twin_desired_patch_topic,
    twin_response_topic,
)

pytestmark = pytest.mark.fast


def sdk_event_topic(message: SdkMessage, device: str = "edge1", module: str = "sensor") -> str:
    """Return the topic the SDK publishes a module message on."""
    return sdk.encode_message_properties_in_topic(message, sdk.get_telemetry_topic_for_publish(device, module))


def test_an_sdk_event_topic_parses_into_identity_output_and_properties() -> None:
    message = SdkMessage(b"{}", message_id="m-1", content_encoding="utf-8", content_type="application/json")
    message.output_name = "telemetry"
    message.correlation_id = "c/1"
    message.custom_properties.update({"kind": "reading", "a b": "x+y&z=1", "ünï": "%41", "$weird": "v"})

    event = parse_event_topic(sdk_event_topic(message))

    assert (event.device_id, event.module_id, event.output) == ("edge1", "sensor", "telemetry")
    assert event.system_properties == {
        "messageId": "m-1",
        "correlationId": "c/1",
        "contentType": "application/json",
        "contentEncoding": "utf-8",
    }
    assert event.properties == {"kind": "reading", "a b": "x+y&z=1", "ünï": "%41", "$weird": "v"}


def test_an_event_without_output_or_properties_parses() -> None:
    event = parse_event_topic(sdk_event_topic(SdkMessage(b"x")))

    assert event.output is None
    assert event.properties == {} and event.system_properties == {}


def test_connection_identity_written_by_the_sender_is_ignored() -> None:
    event = parse_event_topic("devices/edge1/modules/sensor/messages/events/%24.cmid=inference&%24.cdid=x&k=v")

    assert event.module_id == "sensor"
    assert event.properties == {"k": "v"}


@pytest.mark.parametrize(
    "topic",
    [
        "devices/edge1/messages/events/",
        "devices/edge1/modules/sensor/inputs/x/",
        "$iothub/twin/GET/?$rid=1",
        "devices//modules/sensor/messages/events/",
    ],
)
def test_topics_that_are_not_module_events_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_event_topic(topic)


def test_an_input_topic_reads_back_through_the_sdk_with_input_name_and_properties() -> None:
    topic = format_input_topic(
        "edge1",
        "inference",
        "tele metry",
        {"kind": "reading", "a/b": "c&d=e+f"},
        {"contentType": "application/json", "contentEncoding": "utf-8", "messageId": "m-1", "correlationId": "c-1"},
    )
    received = SdkMessage(b"")

    sdk.extract_message_properties_from_topic(topic, received)

    assert sdk.is_input_topic(topic, "edge1", "inference")
    assert not sdk.is_input_topic(topic, "edge1", "sensor")
    assert sdk.get_input_name_from_topic(topic) == "tele metry"
    assert received.content_type == "application/json"
    assert received.content_encoding == "utf-8"
    assert received.message_id == "m-1"
    assert received.correlation_id == "c-1"  # edgeHub 1.4+ forwards it (OutgoingSystemPropertiesMap)
    assert received.custom_properties == {"kind": "reading", "a/b": "c&d=e+f"}


def test_properties_round_trip_through_encoding() -> None:
    pairs = [("k", "v"), ("sp ace", "a+b"), ("$.ct", "application/json"), ("empty", "")]

    assert parse_properties(encode_properties(pairs)) == pairs
    assert parse_properties("bare&k=v") == [("bare", ""), ("k", "v")]


def test_sdk_twin_requests_parse_and_our_responses_parse_in_the_sdk() -> None:
    get = parse_twin_request_topic(sdk.get_twin_topic_for_publish("GET", "/", "r 1"))
    patch = parse_twin_request_topic(sdk.get_twin_topic_for_publish("PATCH", "/properties/reported/", "r2"))
    response = twin_response_topic(204, "r 1", version=7)

    assert (get.kind, get.rid) == ("get", "r 1")
    assert (patch.kind, patch.rid) == ("patch_reported", "r2")
    assert sdk.is_twin_response_topic(response)
    assert sdk.get_twin_request_id_from_topic(response) == "r 1"
    assert sdk.get_twin_status_code_from_topic(response) == "204"
    assert sdk.is_twin_desired_property_patch_topic(twin_desired_patch_topic(3))
    with pytest.raises(TopicError):
        parse_twin_request_topic("$iothub/twin/DELETE/?$rid=1")
    with pytest.raises(TopicError):
        parse_twin_request_topic("$iothub/twin/GET/")


def test_method_requests_parse_in_the_sdk_and_its_responses_parse_here() -> None:
    request = method_request_topic("re load", "abc")
    response = parse_method_response_topic(sdk.get_method_topic_for_publish("abc", 404))

    assert sdk.is_method_topic(request)
    assert sdk.get_method_name_from_topic(request) == "re load"
    assert sdk.get_method_request_id_from_topic(request) == "abc"
    assert (response.status, response.rid) == (404, "abc")
    with pytest.raises(TopicError):
        parse_method_response_topic("$iothub/methods/res/ok/?$rid=1")
