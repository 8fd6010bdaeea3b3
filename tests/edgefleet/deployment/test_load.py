"""Loading the deployment manifest: the shipped template, placeholders, createOptions, JSON errors."""

from __future__ import annotations

import json
import math

import pytest

from edgefleet.deployment import (
    CREATE_OPTIONS_CHUNK,
    RAW_TELEMETRY_ROUTE_NAME,
    Deployment,
    DeploymentError,
    load_deployment,
    parse_deployment,
    parse_variables,
    validate_deployment,
    with_raw_telemetry_route,
)
from edgefleet.desired import SensorDesired
from edgefleet.messages import BATCH_SCHEMA, CONTENT_ENCODING, CONTENT_TYPE, iot_hub_message_bytes, units_4kb
from edgefleet.routes import RouteSink, RouteSource
from tests.edgefleet.deployment.manifests import TEMPLATE, VARIABLES, agent, template

pytestmark = pytest.mark.fast


def test_shipped_template_loads_with_placeholders_kept_when_no_variables_are_given():
    deployment = load_deployment(TEMPLATE)
    assert isinstance(deployment, Deployment)
    assert set(deployment.modules) == {"fieldbroker", "sensor", "inference"}
    assert deployment.modules["sensor"].image == "${MODULES.sensor}"
    assert deployment.desired("inference")["expectedBundleVersion"] == "${BUNDLE_VERSION}"
    assert deployment.store_and_forward_ttl_s == 7200


def test_shipped_template_routes_sensor_telemetry_to_inference_and_everything_but_raw_telemetry_upstream():
    routes = {route.name: route for route in load_deployment(TEMPLATE).routes}
    to_inference = routes["sensorToInference"]
    assert to_inference.source == RouteSource("module_output", "sensor", "telemetry")
    assert to_inference.sink == RouteSink("module_input", "inference", "telemetry")
    upstream = {
        (route.source.module, route.source.output) for route in routes.values() if route.sink.kind == "upstream"
    }
    # Raw telemetry is an opt-in route: each prediction repeats its reading whole.
    assert upstream == {
        ("sensor", "deadletter"),
        ("inference", "predictions"),
        ("inference", "deadletter"),
        ("inference", "alerts"),
    }
    assert routes["alertsToUpstream"].priority == 0


def test_the_raw_telemetry_route_is_added_on_request_and_validates():
    manifest = with_raw_telemetry_route(load_deployment(TEMPLATE).raw)
    deployment = parse_deployment(manifest)

    [raw] = [route for route in deployment.routes if route.name == RAW_TELEMETRY_ROUTE_NAME]
    assert (raw.source.module, raw.source.output, raw.sink.kind) == ("sensor", "telemetry", "upstream")
    assert [p for p in validate_deployment(deployment) if p.severity == "error"] == []
    assert RAW_TELEMETRY_ROUTE_NAME not in {route.name for route in load_deployment(TEMPLATE).routes}


def test_module_specs_expose_env_and_create_options_as_objects():
    modules = load_deployment(TEMPLATE).modules
    assert modules["sensor"].env == {
        "FIELD_MQTT_HOST": "fieldbroker",
        "FIELD_MQTT_PORT": "8883",
        "FIELD_MQTT_CA_FILE": "/run/secrets/field/ca.pem",
        "FIELD_MQTT_USERNAME": "edgefleet-sensor",
        "FIELD_MQTT_PASSWORD_FILE": "/run/secrets/field/password",
    }
    assert modules["inference"].env["BUNDLE_DIR"] == "/app/bundle"
    assert modules["inference"].create_options["HostConfig"]["Memory"] == 512 * 1024 * 1024
    assert modules["sensor"].status == "running"


def test_desired_properties_are_returned_per_module_and_empty_for_a_module_without_a_twin():
    deployment = load_deployment(TEMPLATE)
    assert deployment.desired("sensor") == {
        "batchWindowMs": 200,
        "maxBatchBytes": 32000,
        "fieldTopic": "fleet/+/telemetry",
        "enabled": True,
    }
    assert deployment.desired("inference")["poorModelThreshold"] == 1.0
    assert deployment.desired("no-such-module") == {}
    deployment.desired("sensor")["enabled"] = False  # a copy: the deployment is unchanged
    assert deployment.desired("sensor")["enabled"] is True


def test_a_full_sensor_batch_with_its_properties_costs_no_iot_hub_unit_beyond_its_bytes():
    # Should the raw telemetry route upstream be on, no 4 KB unit is spent on properties alone.
    max_bytes = load_deployment(TEMPLATE).desired("sensor")["maxBatchBytes"]
    system = {"contentType": CONTENT_TYPE, "contentEncoding": CONTENT_ENCODING}
    size = iot_hub_message_bytes(b"x" * max_bytes, {"schema": BATCH_SCHEMA}, system)
    assert units_4kb(size) == math.ceil(max_bytes / 4096)


def test_the_templates_sensor_batch_size_is_the_sensors_own_default():
    assert load_deployment(TEMPLATE).desired("sensor")["maxBatchBytes"] == SensorDesired.before_twin().max_batch_bytes


def test_variables_expand_into_images_and_desired_properties():
    deployment = load_deployment(TEMPLATE, VARIABLES)
    assert deployment.modules["sensor"].image == VARIABLES["MODULES.sensor"]
    assert deployment.modules["inference"].image == VARIABLES["MODULES.inference"]
    assert deployment.desired("inference")["expectedBundleVersion"] == VARIABLES["BUNDLE_VERSION"]
    assert "${" not in json.dumps(deployment.raw)
    assert validate_deployment(TEMPLATE, variables=VARIABLES) == []


def test_an_unexpanded_placeholder_with_variables_given_is_reported_by_name():
    partial = {key: value for key, value in VARIABLES.items() if key != "BUNDLE_VERSION"}
    with pytest.raises(DeploymentError, match=r"\$\{BUNDLE_VERSION\}") as raised:
        load_deployment(TEMPLATE, partial)
    assert "--var BUNDLE_VERSION=" in str(raised.value)
    assert "MODULES.sensor" not in str(raised.value)
    (problem,) = validate_deployment(TEMPLATE, variables=partial)
    assert problem.severity == "error"
    assert "${BUNDLE_VERSION}" in problem.message


def test_a_variable_value_is_inserted_as_text_even_with_json_special_characters():
    manifest = template()
    deployment = parse_deployment(manifest, {**VARIABLES, "BUNDLE_VERSION": 'v"1\\2'})
    assert deployment.desired("inference")["expectedBundleVersion"] == 'v"1\\2'


def test_create_options_as_deployed_chunked_json_strings_are_read():
    manifest = template()
    settings = agent(manifest)["modules"]["inference"]["settings"]
    options = {"HostConfig": {"Memory": 1}, "Env": [f"K{i}={'x' * 40}" for i in range(12)]}
    text = json.dumps(options, separators=(",", ":"))
    chunks = [text[i : i + CREATE_OPTIONS_CHUNK] for i in range(0, len(text), CREATE_OPTIONS_CHUNK)]
    assert len(chunks) > 1
    settings["createOptions"] = chunks[0]
    for index, chunk in enumerate(chunks[1:], start=1):
        settings[f"createOptions{index:02d}"] = chunk
    assert validate_deployment(manifest) == []
    assert parse_deployment(manifest).modules["inference"].create_options == options


def test_a_duplicate_key_in_the_file_is_reported(tmp_path):
    text = TEMPLATE.read_text(encoding="utf-8").replace(
        '"predictionsToUpstream":', '"alertsToUpstream": "FROM /* INTO $upstream",\n"predictionsToUpstream":'
    )
    path = tmp_path / "deployment.json"
    path.write_text(text, encoding="utf-8")
    (problem,) = validate_deployment(path)
    assert problem.severity == "error"
    assert '"alertsToUpstream" appears twice' in problem.message


def test_a_file_that_is_not_json_is_reported_with_its_line(tmp_path):
    path = tmp_path / "deployment.json"
    path.write_text('{"modulesContent": {,}}', encoding="utf-8")
    (problem,) = validate_deployment(path)
    assert "line 1" in problem.message
    with pytest.raises(DeploymentError, match="not valid JSON"):
        load_deployment(path)


def test_cli_variables_parse_from_name_equals_value():
    assert parse_variables(None) is None
    assert parse_variables(["MODULES.sensor=reg/sensor:1", "BUNDLE_VERSION=a=b"]) == {
        "MODULES.sensor": "reg/sensor:1",
        "BUNDLE_VERSION": "a=b",
    }
    with pytest.raises(DeploymentError, match="NAME=VALUE"):
        parse_variables(["BUNDLE_VERSION"])
