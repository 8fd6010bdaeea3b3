import pytest

from edgefleet.routes import EndpointRef, RouteSink, parse_route, parse_routes, referenced_endpoints, route_message
from tests.edgefleet.routes.conftest import TO_INFERENCE, json_message, message

pytestmark = pytest.mark.fast

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
