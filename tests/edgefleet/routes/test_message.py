import json

import pytest

from edgefleet.routes import message as message_module
from edgefleet.routes import parse_routes, route_message
from tests.edgefleet.routes.conftest import JSON_UTF8, TO_INFERENCE, json_message, message, where

pytestmark = pytest.mark.fast

# -- properties ----------------------------------------------------------------------------------


def test_application_property_names_are_case_insensitive_but_values_are_not():
    assert where("KIND = 'reading'", message(properties={"Kind": "reading"}))
    assert not where("kind = 'READING'", message(properties={"kind": "reading"}))


def test_where_on_connection_module_id_excludes_downstream_devices():
    condition = "NOT IS_DEFINED($connectionModuleId)"
    assert where(condition, message(None, None))
    assert not where(condition, message("sensor", "telemetry"))
    assert where("$connectionModuleId = 'sensor'", message("sensor", "telemetry"))
    assert not where("$connectionModuleId = 'sensor'", message("inference", "telemetry"))
    assert where("$connectionDeviceId = 'edge1'", message("sensor", "telemetry"))


def test_where_on_system_properties_reads_content_type_and_message_id():
    msg = message(system={"contentType": "application/json", "messageId": "m-1"})
    assert where("$contentType = 'application/json' AND $messageId = 'm-1'", msg)
    assert not where("$correlationId = 'm-1'", msg)


# -- the body ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "system",
    [
        {},
        {"contentType": "text/plain", "contentEncoding": "utf-8"},
        {"contentType": "application/json"},
        {"contentType": "application/json", "contentEncoding": "latin-1"},
    ],
)
def test_body_field_is_undefined_unless_content_type_is_json_with_a_utf_encoding(system):
    msg = json_message({"temp": 31}, system=system)
    assert not where("$body.temp > 30", msg)
    assert not where("IS_DEFINED($body.temp)", msg)
    assert where("NOT IS_DEFINED($body.temp) OR true", msg)


def test_content_type_and_encoding_match_case_insensitively_and_utf16_decodes():
    system = {"CONTENTTYPE": "Application/JSON", "contentEncoding": "UTF-16"}
    msg = message(system=system, body=json.dumps({"temp": 31}).encode("utf-16"))
    assert where("$body.temp = 31", msg)


def test_body_that_is_not_json_makes_body_fields_undefined():
    msg = message(system=JSON_UTF8, body=b"{not json")
    assert not where("IS_DEFINED($body.temp)", msg)
    assert not where("$body.temp = 1", message(system=JSON_UTF8, body=b"[1, 2]"))


def test_body_is_parsed_lazily_and_at_most_once_per_message(monkeypatch):
    calls = []
    real = message_module._parse_body

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(message_module, "_parse_body", counting)
    routes = parse_routes(
        {
            "a": "FROM /* WHERE $body.temp > 30 INTO $upstream",
            "b": f"FROM /* WHERE $body.temp < 30 INTO {TO_INFERENCE}",
            "c": "FROM /* WHERE kind = 'x' INTO $upstream",
        }
    )
    msg = json_message({"temp": 31})
    route_message(routes, msg)
    routes[0].matches(msg)
    assert len(calls) == 1
    route_message(routes[2:], json_message({"temp": 31}))
    assert len(calls) == 1  # no $body reference: the body is never parsed
