"""The deployment manifest template, its loader and the offline validator."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from edgefleet.deployment import (
    CREATE_OPTIONS_CHUNK,
    Deployment,
    DeploymentError,
    Problem,
    load_deployment,
    parse_deployment,
    parse_variables,
    validate_deployment,
)
from edgefleet.endpoints import INFERENCE, MODULES, SENSOR, EndpointError, ModuleEndpoints
from edgefleet.routes import RouteSink, RouteSource
from edgefleet_cli.cli import main

pytestmark = pytest.mark.fast

TEMPLATE = Path(__file__).resolve().parents[2] / "deployment" / "deployment.template.json"
_SHIPPED: dict[str, Any] = json.loads(TEMPLATE.read_text(encoding="utf-8"))
VARIABLES = {
    "MODULES.sensor": "registry.example/edgefleet-sensor:0.1.0-amd64",
    "MODULES.inference": "registry.example/edgefleet-inference:0.1.0-amd64",
    "BUNDLE_VERSION": "20261121T061500Z-abc123",
}


def template() -> dict[str, Any]:
    """Return a fresh copy of the shipped template to mutate."""
    return copy.deepcopy(_SHIPPED)


def agent(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["modulesContent"]["$edgeAgent"]["properties.desired"]


def hub(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["modulesContent"]["$edgeHub"]["properties.desired"]


def errors(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.severity == "error"]


def warnings(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.severity == "warning"]


def only_error(manifest: dict[str, Any]) -> Problem:
    found = errors(validate_deployment(manifest))
    assert len(found) == 1, found
    return found[0]


# -- the shipped template ------------------------------------------------------------------------


def test_shipped_template_validates_without_errors_or_warnings():
    assert validate_deployment(TEMPLATE) == []


def test_shipped_template_loads_with_placeholders_kept_when_no_variables_are_given():
    deployment = load_deployment(TEMPLATE)
    assert isinstance(deployment, Deployment)
    assert set(deployment.modules) == {"sensor", "inference"}
    assert deployment.modules["sensor"].image == "${MODULES.sensor}"
    assert deployment.desired("inference")["expectedBundleVersion"] == "${BUNDLE_VERSION}"
    assert deployment.store_and_forward_ttl_s == 7200


def test_shipped_template_routes_sensor_telemetry_to_inference_and_everything_upstream():
    routes = {route.name: route for route in load_deployment(TEMPLATE).routes}
    to_inference = routes["sensorToInference"]
    assert to_inference.source == RouteSource("module_output", "sensor", "telemetry")
    assert to_inference.sink == RouteSink("module_input", "inference", "telemetry")
    upstream = {
        (route.source.module, route.source.output) for route in routes.values() if route.sink.kind == "upstream"
    }
    assert upstream == {
        ("sensor", "telemetry"),
        ("sensor", "deadletter"),
        ("inference", "predictions"),
        ("inference", "deadletter"),
        ("inference", "alerts"),
    }
    assert routes["alertsToUpstream"].priority == 0


def test_module_specs_expose_env_and_create_options_as_objects():
    modules = load_deployment(TEMPLATE).modules
    assert modules["sensor"].env == {"FIELD_MQTT_HOST": "field-broker", "FIELD_MQTT_PORT": "1883"}
    assert modules["inference"].env["BUNDLE_DIR"] == "/app/bundle"
    assert modules["inference"].create_options["HostConfig"]["Memory"] == 512 * 1024 * 1024
    assert modules["sensor"].status == "running"


def test_desired_properties_are_returned_per_module_and_empty_for_a_module_without_a_twin():
    deployment = load_deployment(TEMPLATE)
    assert deployment.desired("sensor") == {
        "batchWindowMs": 200,
        "maxBatchBytes": 3900,
        "fieldTopic": "fleet/+/telemetry",
        "enabled": True,
    }
    assert deployment.desired("inference")["poorModelThreshold"] == 1.0
    assert deployment.desired("no-such-module") == {}
    deployment.desired("sensor")["enabled"] = False  # a copy: the deployment is unchanged
    assert deployment.desired("sensor")["enabled"] is True


def test_sensor_batches_stay_under_iot_hubs_4_kb_message_unit():
    assert load_deployment(TEMPLATE).desired("sensor")["maxBatchBytes"] < 4096


# -- variables -----------------------------------------------------------------------------------


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


# -- routes against modules and code ------------------------------------------------------------


def test_a_route_to_an_unknown_module_is_reported_with_the_route_name():
    manifest = template()
    hub(manifest)["routes"]["sensorToInference"] = (
        'FROM /messages/modules/sensor/outputs/telemetry INTO BrokeredEndpoint("/modules/infrence/inputs/telemetry")'
    )
    problem = only_error(manifest)
    assert problem.where == 'route "sensorToInference"'
    assert problem.message == 'module "infrence" is not in $edgeAgent modules (known: sensor, inference)'


def test_a_route_from_an_unknown_module_is_reported_with_the_route_name():
    manifest = template()
    hub(manifest)["routes"]["telemetryToUpstream"] = "FROM /messages/modules/senser/outputs/telemetry INTO $upstream"
    problem = only_error(manifest)
    assert problem.where == 'route "telemetryToUpstream"'
    assert 'module "senser"' in problem.message


def test_a_route_to_an_undeclared_input_is_reported_with_the_route_name():
    manifest = template()
    hub(manifest)["routes"]["sensorToInference"] = (
        'FROM /messages/modules/sensor/outputs/telemetry INTO BrokeredEndpoint("/modules/inference/inputs/input1")'
    )
    found = validate_deployment(manifest)
    (problem,) = errors(found)
    assert problem.where == 'route "sensorToInference"'
    assert 'no input "input1"' in problem.message
    assert "declared: telemetry" in problem.message
    # ...and the declared input is now fed by nothing.
    assert any('no route feeds input "telemetry"' in warning.message for warning in warnings(found))


def test_a_route_from_an_undeclared_output_is_reported_with_the_route_name():
    manifest = template()
    hub(manifest)["routes"]["predictionsToUpstream"] = (
        "FROM /messages/modules/inference/outputs/prediction INTO $upstream"
    )
    problem = errors(validate_deployment(manifest))[0]
    assert problem.where == 'route "predictionsToUpstream"'
    assert 'no output "prediction"' in problem.message
    assert "declared: predictions, deadletter, alerts" in problem.message


def test_a_declared_output_that_no_route_carries_is_a_warning_not_an_error():
    manifest = template()
    del hub(manifest)["routes"]["alertsToUpstream"]
    found = validate_deployment(manifest)
    assert errors(found) == []
    (warning,) = warnings(found)
    assert warning.where == 'module "inference"'
    assert 'output "alerts"' in warning.message


def test_a_module_wide_source_carries_every_output_of_that_module():
    manifest = template()
    routes = hub(manifest)["routes"]
    for name in ("predictionsToUpstream", "inferenceDeadlettersToUpstream", "alertsToUpstream"):
        del routes[name]
    routes["inferenceToUpstream"] = "FROM /messages/modules/inference/outputs/* INTO $upstream"
    assert validate_deployment(manifest) == []


def test_a_module_without_an_endpoint_declaration_is_a_warning():
    manifest = template()
    agent(manifest)["modules"]["extra"] = copy.deepcopy(agent(manifest)["modules"]["sensor"])
    found = validate_deployment(manifest)
    assert errors(found) == []
    assert [(w.where, "no declaration" in w.message) for w in warnings(found)] == [('module "extra"', True)]


def test_a_route_grammar_error_is_reported_with_the_route_name_and_position():
    manifest = template()
    hub(manifest)["routes"]["telemetryToUpstream"] = (
        "FROM /messages/modules/sensor/outputs/telemetry WHERE severity > 2 INTO $upstream"
    )
    problem = only_error(manifest)
    assert problem.where == 'route "telemetryToUpstream"'
    assert "AS_NUMBER" in problem.message
    assert "at position" in problem.message


def test_every_broken_route_is_reported_not_only_the_first():
    manifest = template()
    routes = hub(manifest)["routes"]
    routes["telemetryToUpstream"] = "FROM /messages/modules/sensor/outputs/telemetry INTO"
    routes["predictionsToUpstream"] = "FROM /nowhere INTO $upstream"
    names = {problem.where for problem in errors(validate_deployment(manifest))}
    assert names == {'route "telemetryToUpstream"', 'route "predictionsToUpstream"'}


def test_route_priority_needs_edgehub_schema_version_1_1():
    manifest = template()
    hub(manifest)["schemaVersion"] = "1.0"
    problem = only_error(manifest)
    assert problem.where == 'route "alertsToUpstream"'
    assert '"1.1"' in problem.message


# -- structure -----------------------------------------------------------------------------------


def test_a_missing_edgehub_is_reported():
    manifest = template()
    del manifest["modulesContent"]["$edgeHub"]
    problem = only_error(manifest)
    assert problem.where == "modulesContent"
    assert '"$edgeHub"' in problem.message
    with pytest.raises(DeploymentError, match=r"\$edgeHub"):
        parse_deployment(manifest)


def test_a_bad_module_status_is_reported_with_the_allowed_values():
    manifest = template()
    agent(manifest)["modules"]["sensor"]["status"] = "runing"
    problem = only_error(manifest)
    assert problem.where == 'module "sensor"'
    assert problem.message == '"status" is "runing"; it must be one of running, stopped'


def test_a_bad_restart_policy_and_an_unimplemented_one_are_reported():
    manifest = template()
    agent(manifest)["modules"]["sensor"]["restartPolicy"] = "on-failed"
    agent(manifest)["modules"]["inference"]["restartPolicy"] = "on-unhealthy"
    found = validate_deployment(manifest)
    assert [problem.where for problem in errors(found)] == ['module "sensor"']
    assert [problem.where for problem in warnings(found)] == ['module "inference"']


def test_edgehub_must_run_with_restart_policy_always():
    manifest = template()
    agent(manifest)["systemModules"]["edgeHub"]["restartPolicy"] = "never"
    assert only_error(manifest).where == "system module edgeHub"


def test_required_keys_and_types_are_checked_at_each_level():
    manifest = template()
    del agent(manifest)["schemaVersion"]
    agent(manifest)["runtime"]["type"] = "containerd"
    agent(manifest)["modules"]["inference"]["type"] = "Docker"
    del agent(manifest)["modules"]["sensor"]["settings"]["image"]
    hub(manifest)["storeAndForwardConfiguration"]["timeToLiveSecs"] = "7200"
    where = sorted(problem.where for problem in errors(validate_deployment(manifest)))
    assert where == [
        "$edgeAgent",
        "$edgeAgent.runtime",
        "$edgeHub.storeAndForwardConfiguration",
        'module "inference"',
        'module "sensor"',
    ]


def test_an_invalid_module_name_is_reported():
    manifest = template()
    modules = agent(manifest)["modules"]
    modules["bad name"] = copy.deepcopy(modules["sensor"])
    assert any(problem.where == 'module "bad name"' for problem in errors(validate_deployment(manifest)))


def test_create_options_must_be_a_json_object():
    manifest = template()
    agent(manifest)["modules"]["sensor"]["settings"]["createOptions"] = ["--memory", "1g"]
    problem = only_error(manifest)
    assert problem.where == 'module "sensor"'
    assert "JSON object" in problem.message


def test_create_options_too_large_for_iot_edge_are_reported():
    manifest = template()
    big = {"Env": [f"K{i}={'x' * 100}" for i in range(60)]}
    agent(manifest)["modules"]["inference"]["settings"]["createOptions"] = big
    problem = only_error(manifest)
    assert problem.where == 'module "inference"'
    assert "4096" in problem.message


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


def test_a_twin_for_a_module_that_is_not_deployed_is_reported():
    manifest = template()
    manifest["modulesContent"]["sensorr"] = {"properties.desired": {"enabled": True}}
    problem = only_error(manifest)
    assert problem.where == 'twin "sensorr"'
    assert "known: sensor, inference" in problem.message


def test_a_twin_property_name_iot_hub_refuses_is_reported():
    manifest = template()
    manifest["modulesContent"]["sensor"]["properties.desired"]["batch.window"] = 1
    assert only_error(manifest).where == 'twin "sensor"'


def test_a_duplicate_key_in_the_file_is_reported(tmp_path):
    text = TEMPLATE.read_text(encoding="utf-8").replace(
        '"telemetryToUpstream":', '"alertsToUpstream": "FROM /* INTO $upstream",\n"telemetryToUpstream":'
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


# -- the CLI entry point -------------------------------------------------------------------------


def test_manifest_validate_main_prints_ok_for_the_shipped_template(capsys):
    assert main(["manifest", "validate", str(TEMPLATE)]) == 0
    assert capsys.readouterr().out.strip() == "OK: 2 modules, 6 routes"


def test_manifest_validate_main_prints_errors_and_warnings_and_fails(tmp_path, capsys):
    manifest = template()
    del hub(manifest)["routes"]["alertsToUpstream"]
    agent(manifest)["modules"]["sensor"]["status"] = "paused"
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    assert main(["manifest", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert 'ERROR module "sensor": "status" is "paused"' in err
    assert 'WARNING module "inference": no route reads output "alerts"' in err


def test_cli_variables_parse_from_name_equals_value():
    assert parse_variables(None) is None
    assert parse_variables(["MODULES.sensor=reg/sensor:1", "BUNDLE_VERSION=a=b"]) == {
        "MODULES.sensor": "reg/sensor:1",
        "BUNDLE_VERSION": "a=b",
    }
    with pytest.raises(DeploymentError, match="NAME=VALUE"):
        parse_variables(["BUNDLE_VERSION"])


# -- endpoints -----------------------------------------------------------------------------------


def test_endpoint_declarations_cover_both_modules():
    assert MODULES == {"sensor": SENSOR, "inference": INFERENCE}
    assert SENSOR.output("telemetry") == "telemetry"
    assert INFERENCE.input("telemetry") == "telemetry"


def test_asking_for_an_undeclared_endpoint_raises_with_the_declared_names():
    with pytest.raises(EndpointError, match=r'no output "predictions" \(declared: telemetry, deadletter\)'):
        SENSOR.output("predictions")
    with pytest.raises(EndpointError, match="letters, digits"):
        ModuleEndpoints(name="x", outputs=("bad/name",))
