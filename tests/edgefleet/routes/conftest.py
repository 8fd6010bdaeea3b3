"""Helpers shared by the route tests: messages as a module would send them and one-condition routes."""

import json

import pytest

from edgefleet.routes import Message, RouteError, parse_route

JSON_UTF8 = {"contentType": "application/json", "contentEncoding": "utf-8"}
TO_INFERENCE = 'BrokeredEndpoint("/modules/inference/inputs/telemetry")'


def message(module="sensor", output="telemetry", properties=None, system=None, body=b"", **kwargs):
    return Message("edge1", module, output, properties or {}, system or {}, body, **kwargs)


def json_message(payload, properties=None, system=JSON_UTF8, **kwargs):
    return message(properties=properties, system=system, body=json.dumps(payload).encode(), **kwargs)


# A message whose property a is "1" and whose b and c are "0".
A_ONLY = message(properties={"a": "1", "b": "0", "c": "0"})


def where(condition, msg):
    """Return whether a route with this WHERE condition takes the message."""
    return parse_route("r", f"FROM /* WHERE {condition} INTO $upstream").matches(msg)


def assert_parse_error(text, problem, at):
    """Assert the route fails to parse with this problem, named and positioned at the text `at` (None: the end)."""
    with pytest.raises(RouteError) as caught:
        parse_route("sensorToInference", text)
    error = caught.value
    expected_position = len(text) if at is None else text.index(at)
    assert problem in error.problem
    assert error.route == "sensorToInference"
    assert error.position == expected_position
    assert str(error).startswith('route "sensorToInference": ')
    assert str(error).endswith(f" at position {expected_position}")
