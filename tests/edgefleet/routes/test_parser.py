import pytest

from edgefleet.errors import EdgefleetError
from edgefleet.routes import RouteError, RouteSink, RouteSource, parse_route, parse_routes
from tests.edgefleet.routes.conftest import TO_INFERENCE, assert_parse_error

pytestmark = pytest.mark.fast

# -- sources -------------------------------------------------------------------------------------


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


# -- parse errors in the route statement ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem", "at"),
    [
        ("FORM /messages/* INTO $upstream", "expected FROM", "FORM"),
        ("   INTO $upstream", "expected FROM", "INTO"),
        ("FROM messages/* INTO $upstream", "expected a source path", "messages"),
        ("FROM /messages/modules/where/* INTO $upstream", "cannot name a module", "where"),
        ("FROM /messages/ INTO $upstream", "a name or '*' in the source path", "INTO"),
        ("FROM", "expected a source path", None),
        ("FROM /messages/* $upstream", "expected WHERE or INTO", "$upstream"),
        ("FROM /messages/* WHERE kind = 'a'", "expected INTO", None),
        ("FROM /messages/* WHERE kind = 'a' $upstream", "expected INTO, found '$upstream'", "$upstream"),
        ("FROM /messages/* WHERE INTO $upstream", "expected a condition after WHERE", "INTO"),
        ("FROM /messages/* INTO", "expected a sink", None),
        ("FROM /messages/* INTO $downstream", "unknown sink '$downstream'", "$downstream"),
        ('FROM /messages/* INTO Endpoint("/modules/a/inputs/b")', "unknown sink 'Endpoint'", "Endpoint"),
        ('FROM /messages/* INTO BrokeredEndpoint("/modules/a/inputs")', "bad BrokeredEndpoint address", '"'),
        ("FROM /messages/* INTO BrokeredEndpoint(/modules/a/inputs/b)", "needs a quoted address", "/modules"),
        ('FROM /messages/* INTO BrokeredEndpoint("/modules/a/inputs/b"', "'(' is never closed", "("),
        ("FROM /messages/* WHERE kind = 'a') INTO $upstream", "')' without a matching '('", ")"),
        ("FROM /messages/* WHERE (kind = 'a')) INTO $upstream", "')' without a matching '('", ") INTO"),
    ],
)
def test_parse_errors_name_the_route_the_problem_and_the_position(text, problem, at):
    assert_parse_error(text, problem, at)


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
