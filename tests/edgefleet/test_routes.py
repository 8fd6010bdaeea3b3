import json

import pytest

from edgefleet import routes as routes_module
from edgefleet.errors import EdgefleetError
from edgefleet.routes import (
    EndpointRef,
    Message,
    RouteError,
    RouteSink,
    RouteSource,
    parse_route,
    parse_routes,
    referenced_endpoints,
    route_message,
)

pytestmark = pytest.mark.fast

JSON_UTF8 = {"contentType": "application/json", "contentEncoding": "utf-8"}
TO_INFERENCE = 'BrokeredEndpoint("/modules/inference/inputs/telemetry")'


def message(module="sensor", output="telemetry", properties=None, system=None, body=b"", **kwargs):
    return Message("edge1", module, output, properties or {}, system or {}, body, **kwargs)


def json_message(payload, properties=None, system=JSON_UTF8, **kwargs):
    return message(properties=properties, system=system, body=json.dumps(payload).encode(), **kwargs)


def where(condition, msg):
    """Return whether a route with this WHERE condition takes the message."""
    return parse_route("r", f"FROM /* WHERE {condition} INTO $upstream").matches(msg)


# -- sources -------------------------------------------------------------------------------------

FROM_SENSOR_TELEMETRY = message("sensor", "telemetry")
FROM_SENSOR_NO_OUTPUT = message("sensor", None)
FROM_OTHER_MODULE = message("inference", "telemetry")
FROM_DOWNSTREAM_DEVICE = message(None, None)
TWIN_CHANGE = message("sensor", None, kind="twin_change_notification")


@pytest.mark.parametrize(
    ("source", "msg", "expected"),
    [
        ("/*", FROM_SENSOR_TELEMETRY, True),
        ("/*", FROM_DOWNSTREAM_DEVICE, True),
        ("/*", TWIN_CHANGE, True),
        ("/twinChangeNotifications", TWIN_CHANGE, True),
        ("/twinChangeNotifications", FROM_SENSOR_TELEMETRY, False),
        ("/messages/*", FROM_SENSOR_TELEMETRY, True),
        ("/messages/*", FROM_DOWNSTREAM_DEVICE, True),
        ("/messages/*", TWIN_CHANGE, False),
        ("/messages/modules/*", FROM_SENSOR_NO_OUTPUT, True),
        ("/messages/modules/*", FROM_DOWNSTREAM_DEVICE, False),
        ("/messages/modules/*", TWIN_CHANGE, False),
        ("/messages/modules/sensor/*", FROM_SENSOR_TELEMETRY, True),
        ("/messages/modules/sensor/*", FROM_SENSOR_NO_OUTPUT, True),
        ("/messages/modules/sensor/*", FROM_OTHER_MODULE, False),
        ("/messages/modules/sensor/*", FROM_DOWNSTREAM_DEVICE, False),
        ("/messages/modules/sensor/outputs/*", FROM_SENSOR_TELEMETRY, True),
        ("/messages/modules/sensor/outputs/*", FROM_SENSOR_NO_OUTPUT, False),
        ("/messages/modules/sensor/outputs/*", FROM_OTHER_MODULE, False),
        ("/messages/modules/sensor/outputs/telemetry", FROM_SENSOR_TELEMETRY, True),
        ("/messages/modules/sensor/outputs/telemetry", message("sensor", "deadletter"), False),
        ("/messages/modules/sensor/outputs/telemetry", FROM_SENSOR_NO_OUTPUT, False),
        ("/messages/modules/sensor/outputs/telemetry", FROM_OTHER_MODULE, False),
    ],
)
def test_each_source_form_matches_only_its_messages(source, msg, expected):
    assert parse_route("r", f"FROM {source} INTO $upstream").matches(msg) is expected


@pytest.mark.parametrize(
    ("source", "parsed"),
    [
        ("/*", RouteSource("all")),
        ("/twinChangeNotifications", RouteSource("twin_change_notifications")),
        ("/messages/*", RouteSource("messages")),
        ("/messages/modules/*", RouteSource("modules")),
        ("/messages/modules/sensor/*", RouteSource("module", "sensor")),
        ("/messages/modules/sensor/outputs/*", RouteSource("module_outputs", "sensor")),
        ("/messages/modules/sensor/outputs/telemetry", RouteSource("module_output", "sensor", "telemetry")),
    ],
)
def test_source_parses_to_its_kind_and_renders_back(source, parsed):
    route = parse_route("r", f"FROM {source} INTO $upstream")
    assert route.source == parsed
    assert str(route.source) == source


# -- sinks ---------------------------------------------------------------------------------------


def test_upstream_sink_sends_to_iot_hub():
    route = parse_route("r", "FROM /messages/* INTO $upstream")
    assert route.sink == RouteSink("upstream")
    assert str(route.sink) == "$upstream"


@pytest.mark.parametrize(
    "sink",
    [
        TO_INFERENCE,
        "BrokeredEndpoint('/modules/inference/inputs/telemetry')",
        'brokeredendpoint ( "/modules/inference/inputs/telemetry" )',
    ],
)
def test_brokered_endpoint_sink_names_module_and_input(sink):
    route = parse_route("r", f"FROM /messages/modules/sensor/outputs/telemetry INTO {sink}")
    assert route.sink == RouteSink("module_input", "inference", "telemetry")
    assert str(route.sink) == TO_INFERENCE


def test_select_star_prefix_is_accepted_like_edgehub():
    route = parse_route("r", "SELECT * FROM /messages/* INTO $upstream")
    assert route.source == RouteSource("messages")


# -- WHERE: properties ---------------------------------------------------------------------------


def test_where_on_application_property_filters_by_value():
    assert where("kind = 'reading'", message(properties={"kind": "reading"}))
    assert not where("kind = 'reading'", message(properties={"kind": "alert"}))
    assert where("kind != 'alert'", message(properties={"kind": "reading"}))
    assert where("kind <> 'alert'", message(properties={"kind": "reading"}))


def test_application_property_names_are_case_insensitive_but_values_are_not():
    assert where("KIND = 'reading'", message(properties={"Kind": "reading"}))
    assert not where("kind = 'READING'", message(properties={"kind": "reading"}))


def test_where_on_connection_module_id_excludes_downstream_devices():
    condition = "NOT IS_DEFINED($connectionModuleId)"
    assert where(condition, FROM_DOWNSTREAM_DEVICE)
    assert not where(condition, FROM_SENSOR_TELEMETRY)
    assert where("$connectionModuleId = 'sensor'", FROM_SENSOR_TELEMETRY)
    assert not where("$connectionModuleId = 'sensor'", FROM_OTHER_MODULE)
    assert where("$connectionDeviceId = 'edge1'", FROM_SENSOR_TELEMETRY)


def test_where_on_system_properties_reads_content_type_and_message_id():
    msg = message(system={"contentType": "application/json", "messageId": "m-1"})
    assert where("$contentType = 'application/json' AND $messageId = 'm-1'", msg)
    assert not where("$correlationId = 'm-1'", msg)


def test_dollar_name_prefers_an_application_property_unless_escaped_in_braces():
    msg = message(properties={"$messageId": "app"}, system={"messageId": "sys"})
    assert where("$messageId = 'app'", msg)
    assert where("{$messageId} = 'sys'", msg)
    assert where("{ $messageId } = 'sys'", msg)


# -- WHERE: $body --------------------------------------------------------------------------------


def test_where_on_body_field_filters_by_value():
    condition = "$body.features.temp > 30"
    assert where(condition, json_message({"features": {"temp": 31.5}}))
    assert not where(condition, json_message({"features": {"temp": 12}}))
    assert where("$body.device_id = 'd-7'", json_message({"device_id": "d-7"}))


def test_body_fields_support_array_indexes_booleans_and_null():
    msg = json_message({"readings": [{"temp": 20}, {"temp": 40}], "ok": True, "label": None})
    assert where("$body.readings[1].temp = 40", msg)
    assert not where("$body.readings[2].temp = 40", msg)
    assert where("$body.ok", msg)
    assert where("$body.ok = true", msg)
    assert where("IS_NULL($body.label) AND NOT IS_DEFINED($body.missing)", msg)


def test_body_objects_and_arrays_are_not_values():
    msg = json_message({"features": {"temp": 1}, "tags": [1]})
    assert not where("IS_DEFINED($body.features)", msg)
    assert not where("IS_DEFINED($body.tags)", msg)


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
    real = routes_module._parse_body

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(routes_module, "_parse_body", counting)
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


# -- WHERE: logic --------------------------------------------------------------------------------

A_ONLY = message(properties={"a": "1", "b": "0", "c": "0"})


def test_and_binds_tighter_than_or():
    assert where("a = '1' OR b = '1' AND c = '1'", A_ONLY)
    assert not where("(a = '1' OR b = '1') AND c = '1'", A_ONLY)


def test_not_applies_to_the_whole_comparison_and_binds_tighter_than_and():
    assert where("NOT b = '1' AND a = '1'", A_ONLY)
    assert not where("NOT (b = '0' AND a = '1')", A_ONLY)
    assert where("NOT NOT a = '1'", A_ONLY)


def test_keywords_and_function_names_are_case_insensitive():
    route = parse_route("r", "from /messages/* where a = '1' And Not b = '1' oR false into $UPSTREAM")
    assert route.matches(A_ONLY)
    assert where("is_defined(a) AND Starts_With(a, '1')", A_ONLY)


def test_comparisons_with_a_missing_property_are_false_both_ways():
    msg = message(properties={})
    assert not where("missing = 'x'", msg)
    assert not where("missing != 'x'", msg)
    assert not where("NOT (missing = 'x')", msg)
    assert not where("AS_NUMBER(missing) > 0", msg)
    assert not where("missing = also_missing", msg)
    assert not where("$body.a = $body.b", msg)


def test_undefined_is_absorbed_by_a_decisive_operand():
    msg = message(properties={})
    assert where("missing = 'x' OR true", msg)
    assert not where("missing = 'x' AND true", msg)
    assert where("NOT (missing = 'x' AND false)", msg)  # undefined AND false is false
    assert not where("NOT (missing = 'x' OR false)", msg)  # undefined OR false stays undefined


def test_a_condition_that_is_not_boolean_does_not_route():
    assert not where("'text'", message())
    assert not where("3", message())
    assert not where("null", message())


# -- WHERE: numbers and strings ------------------------------------------------------------------


def test_comparing_a_string_property_with_a_number_is_rejected_and_suggests_as_number():
    with pytest.raises(RouteError, match=r"cannot compare a string with a number.*AS_NUMBER") as caught:
        parse_route("r", "FROM /* WHERE severity > 2 INTO $upstream")
    assert caught.value.position == len("FROM /* WHERE severity ")


def test_as_number_compares_a_property_numerically():
    assert where("AS_NUMBER(severity) > 2", message(properties={"severity": "10"}))
    assert not where("AS_NUMBER(severity) > 2", message(properties={"severity": "1.5"}))
    assert not where("AS_NUMBER(severity) > 2", message(properties={"severity": "high"}))
    assert where("AS_NUMBER(severity) = 1000", message(properties={"severity": "1e3"}))


def test_strings_compare_ordinally_so_numeric_text_is_not_numeric():
    assert where("severity > '10'", message(properties={"severity": "9"}))
    assert where("'a' < 'b' AND 'B' < 'a'", message())


def test_a_body_value_of_another_type_never_equals():
    msg = json_message({"temp": "31", "flag": "true"})
    assert not where("$body.temp = 31", msg)
    assert not where("$body.temp != 31", msg)
    assert where("$body.temp = '31'", msg)
    assert not where("$body.flag = true", msg)


@pytest.mark.parametrize(
    "condition",
    [
        "1 + 2 * 3 = 7",
        "(1 + 2) * 3 = 9",
        "7 % 4 = 3",
        "-7 % 4 = -3",
        "10 / 4 = 2.5",
        "-(2 - 5) = 3",
        "0x1F = 31",
        "1.5e2 = 150",
        "$body.temp * 2 > 60",
        "NOT IS_DEFINED(1 % 0)",
    ],
)
def test_arithmetic_follows_the_usual_precedence(condition):
    assert where(condition, json_message({"temp": 31}))


@pytest.mark.parametrize(
    "condition",
    [
        "IS_STRING(kind) AND NOT IS_NUMBER(kind)",
        "IS_NUMBER($body.temp) AND IS_BOOL($body.ok)",
        "STARTS_WITH($connectionModuleId, 'sen')",
        "ENDS_WITH(kind, 'ing')",
        "CONTAINS(kind, 'adi')",
        "LOWER(mixed) = 'abc'",
        "UPPER(mixed) = 'ABC'",
        "LENGTH(kind) = 7",
        "SUBSTRING(kind, 2) = 'ading'",
        "SUBSTRING(kind, 0, 4) = 'read'",
        "INDEX_OF(kind, 'ad') = 2",
        "CONCAT(kind, '-', mixed) = 'reading-aBc'",
        "ABS(-3) = 3 AND SQUARE(3) = 9 AND POWER(2, 10) = 1024",
        "FLOOR(2.7) = 2 AND CEILING(2.1) = 3 AND SIGN(-4) = -1 AND SQRT(16) = 4",
        "AS_NUMBER('42') = 42 AND AS_NUMBER(42) = 42",
        "NOT IS_DEFINED(SQRT(-1))",
        "NOT IS_DEFINED(SUBSTRING(kind, 99))",
    ],
)
def test_functions_evaluate_as_documented(condition):
    msg = json_message({"temp": 31, "ok": False}, properties={"kind": "reading", "mixed": "aBc"})
    assert where(condition, msg)


def test_string_literals_take_either_quote_and_escapes():
    msg = message(properties={"quote": 'it\'s "ok"', "snow": "\u2603"})
    assert where("quote = 'it\\'s \"ok\"'", msg)
    assert where('quote = "it\'s \\"ok\\""', msg)
    assert where("snow = '\\u2603'", msg)


# -- parse errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem", "at"),
    [
        ("FORM /messages/* INTO $upstream", "expected FROM", "FORM"),
        ("   INTO $upstream", "expected FROM", "INTO"),
        ("FROM /messages/sensor INTO $upstream", "unknown source path '/messages/sensor'", "/messages/sensor"),
        ("FROM /messages/modules/sensor INTO $upstream", "unknown source path", "/messages/modules/sensor"),
        ("FROM", "expected a source path", None),
        ("FROM /messages/* $upstream", "expected WHERE or INTO", "$upstream"),
        ("FROM /messages/* WHERE kind = 'a'", "expected INTO", None),
        ("FROM /messages/* WHERE kind = 'a' $upstream", "expected INTO, found '$upstream'", "$upstream"),
        ("FROM /messages/* WHERE INTO $upstream", "expected a condition after WHERE", "INTO"),
        ("FROM /messages/* INTO", "expected a sink", None),
        ("FROM /messages/* INTO $downstream", "unknown sink '$downstream'", "$downstream"),
        ('FROM /messages/* INTO Endpoint("/modules/a/inputs/b")', "unknown sink 'Endpoint'", "Endpoint"),
        ('FROM /messages/* INTO BrokeredEndpoint("/modules/a/outputs/b")', "bad BrokeredEndpoint address", '"'),
        ("FROM /messages/* INTO BrokeredEndpoint(/modules/a/inputs/b)", "needs a quoted address", "/modules"),
        ('FROM /messages/* INTO BrokeredEndpoint("/modules/a/inputs/b"', "'(' is never closed", "("),
        ("FROM /messages/* WHERE (kind = 'a' INTO $upstream", "'(' is never closed", "("),
        ("FROM /messages/* WHERE kind = 'a') INTO $upstream", "')' without a matching '('", ")"),
        ("FROM /messages/* WHERE (kind = 'a')) INTO $upstream", "')' without a matching '('", ") INTO"),
        ("FROM /messages/* WHERE kind = 'a INTO $upstream", "unterminated string", "'a"),
        ("FROM /messages/* WHERE kind = 'a\\q' INTO $upstream", "invalid escape", "\\q"),
        ("FROM /messages/* WHERE IS_ARRAY(kind) INTO $upstream", "unknown function 'IS_ARRAY'", "IS_ARRAY"),
        (
            "FROM /messages/* WHERE kind = 'a' INTO $upstream WHERE x = 'y'",
            "unexpected 'WHERE' after the sink",
            "WHERE x",
        ),
        ("FROM /messages/* INTO $upstream garbage", "unexpected 'garbage' after the sink", "garbage"),
        ("FROM /messages/* WHERE kind == 'a' INTO $upstream", "'==' is not an operator", "=="),
        ("FROM /messages/* WHERE kind = 'a' && x = 'b' INTO $upstream", "'&&' is not an operator", "&&"),
        ("FROM /messages/* WHERE kind = 'a' AND INTO $upstream", "expected a value before INTO", "INTO"),
        ("FROM /messages/* WHERE kind # 'a' INTO $upstream", "unexpected character '#'", "#"),
        ("FROM /messages/* WHERE LENGTH(kind, kind) = 1 INTO $upstream", "LENGTH takes 1 argument", "LENGTH"),
        ("FROM /messages/* WHERE LOWER(3) = 'a' INTO $upstream", "LOWER(number) is not defined", "LOWER"),
        ("FROM /messages/* WHERE kind + 1 = 2 INTO $upstream", "'+' needs numbers, not a string", "+"),
        ("FROM /messages/* WHERE kind AND true INTO $upstream", "AND needs boolean operands", "AND"),
        ("FROM /messages/* WHERE $body = 'x' INTO $upstream", "query a field of the body", "$body"),
        ("FROM /messages/* WHERE $body.a..b = 1 INTO $upstream", "bad $body path", "..b"),
        ("FROM /messages/* WHERE $twin.tags.x = 'y' INTO $upstream", "twin tags or properties", "$twin"),
        ("FROM /messages/* WHERE 12ab = 1 INTO $upstream", "malformed number", "12ab"),
    ],
)
def test_parse_errors_name_the_route_the_problem_and_the_position(text, problem, at):
    with pytest.raises(RouteError) as caught:
        parse_route("sensorToInference", text)
    error = caught.value
    expected_position = len(text) if at is None else text.index(at)
    assert problem in error.problem
    assert error.route == "sensorToInference"
    assert error.position == expected_position
    assert str(error).startswith('route "sensorToInference": ')
    assert str(error).endswith(f" at position {expected_position}")


def test_route_error_is_an_edgefleet_error_for_the_cli():
    assert issubclass(RouteError, EdgefleetError)


# -- the routes object: string and {route, priority, timeToLiveSecs} forms -----------------------


def test_parse_routes_accepts_strings_and_objects_with_priority_and_ttl_in_order():
    parsed = parse_routes(
        {
            "raw": "FROM /messages/modules/sensor/outputs/telemetry INTO $upstream",
            "sensorToInference": {
                "route": f"FROM /messages/modules/sensor/outputs/telemetry INTO {TO_INFERENCE}",
                "priority": 0,
                "timeToLiveSecs": 86400,
            },
            "predictions": {"route": "FROM /messages/modules/inference/outputs/predictions INTO $upstream"},
        }
    )
    assert [route.name for route in parsed] == ["raw", "sensorToInference", "predictions"]
    assert (parsed[0].priority, parsed[0].time_to_live_secs) == (None, None)
    assert (parsed[1].priority, parsed[1].time_to_live_secs) == (0, 86400)
    assert (parsed[2].priority, parsed[2].time_to_live_secs) == (None, None)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"route": "FROM /* INTO $upstream", "priority": 10}, "priority must be an integer from 0 to 9"),
        ({"route": "FROM /* INTO $upstream", "priority": -1}, "priority must be"),
        ({"route": "FROM /* INTO $upstream", "priority": True}, "priority must be"),
        ({"route": "FROM /* INTO $upstream", "priority": "1"}, "priority must be"),
        ({"route": "FROM /* INTO $upstream", "timeToLiveSecs": 0}, "timeToLiveSecs must be a positive integer"),
        ({"route": "FROM /* INTO $upstream", "timeToLiveSecs": 1.5}, "timeToLiveSecs must be"),
        ({"route": "FROM /* INTO $upstream", "ttl": 5}, "unknown key(s) ttl"),
        ({"priority": 1}, "needs a 'route' string"),
        (["FROM /* INTO $upstream"], "must be a string or an object"),
    ],
)
def test_parse_routes_rejects_malformed_route_objects_by_name(spec, problem):
    with pytest.raises(RouteError, match=r'^route "bad": ') as caught:
        parse_routes({"ok": "FROM /* INTO $upstream", "bad": spec})
    assert problem in caught.value.problem


def test_parse_routes_reports_a_grammar_error_with_its_route_name():
    with pytest.raises(RouteError, match=r'^route "second": expected FROM at position 0$'):
        parse_routes({"first": "FROM /* INTO $upstream", "second": {"route": "INTO $upstream"}})


# -- routing a message ---------------------------------------------------------------------------

DESIGN_ROUTES = {
    "sensorToInference": f"FROM /messages/modules/sensor/outputs/telemetry INTO {TO_INFERENCE}",
    "rawToLake": "FROM /messages/modules/sensor/outputs/telemetry INTO $upstream",
    "predictionsToLake": "FROM /messages/modules/inference/outputs/predictions INTO $upstream",
    "deadletters": "FROM /messages/modules/inference/outputs/deadletter INTO $upstream",
    "hotReadings": f"FROM /messages/modules/sensor/* WHERE $body.features.temp > 90 INTO {TO_INFERENCE}",
}


def test_route_message_returns_each_sink_once_in_route_order():
    routes = parse_routes(DESIGN_ROUTES)
    hot = json_message({"features": {"temp": 95}})
    assert route_message(routes, hot) == [RouteSink("module_input", "inference", "telemetry"), RouteSink("upstream")]
    prediction = message("inference", "predictions")
    assert route_message(routes, prediction) == [RouteSink("upstream")]


def test_route_message_returns_nothing_when_no_route_matches():
    routes = parse_routes(DESIGN_ROUTES)
    assert route_message(routes, message("inference", "debug")) == []
    assert route_message(routes, FROM_DOWNSTREAM_DEVICE) == []


def test_referenced_endpoints_lists_module_outputs_and_inputs_for_validation():
    routes = parse_routes(
        {
            **DESIGN_ROUTES,
            "all": "FROM /messages/* INTO $upstream",
            "anyOutput": "FROM /messages/modules/inference/outputs/* INTO $upstream",
        }
    )
    assert referenced_endpoints(routes) == {
        EndpointRef("output", "sensor", "telemetry"),
        EndpointRef("output", "sensor", None),
        EndpointRef("output", "inference", "predictions"),
        EndpointRef("output", "inference", "deadletter"),
        EndpointRef("output", "inference", None),
        EndpointRef("input", "inference", "telemetry"),
    }
