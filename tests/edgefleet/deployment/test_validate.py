"""The offline validator: structure, routes against modules and the endpoints their code declares."""

from __future__ import annotations

import copy
import json

import pytest

from edgefleet.deployment import DeploymentError, parse_deployment, validate_deployment
from edgefleet_cli.cli import main
from tests.edgefleet.deployment.manifests import TEMPLATE, agent, errors, hub, only_error, template, warnings

pytestmark = pytest.mark.fast


def test_shipped_template_validates_without_errors_or_warnings():
    assert validate_deployment(TEMPLATE) == []


def test_a_route_to_an_unknown_module_is_reported_with_the_route_name():
    manifest = template()
    hub(manifest)["routes"]["sensorToInference"] = (
        'FROM /messages/modules/sensor/outputs/telemetry INTO BrokeredEndpoint("/modules/infrence/inputs/telemetry")'
    )
    problem = only_error(manifest)
    assert problem.where == 'route "sensorToInference"'
    assert problem.message == 'module "infrence" is not in $edgeAgent modules (known: fieldbroker, sensor, inference)'


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


def test_a_module_edgefleet_does_not_ship_draws_no_warning():
    manifest = template()
    agent(manifest)["modules"]["extra"] = copy.deepcopy(agent(manifest)["modules"]["sensor"])
    hub(manifest)["routes"]["extraToUpstream"] = "FROM /messages/modules/extra/outputs/anything INTO $upstream"
    assert validate_deployment(manifest) == []


def test_a_source_module_differing_only_in_case_is_a_warning_that_says_so():
    manifest = template()
    hub(manifest)["routes"]["telemetryToUpstream"] = "FROM /messages/modules/Sensor/outputs/telemetry INTO $upstream"
    found = validate_deployment(manifest)
    assert errors(found) == []
    (warning,) = warnings(found)
    assert warning.where == 'route "telemetryToUpstream"'
    assert "differ only in case" in warning.message
    assert '"sensor"' in warning.message


def test_a_sink_module_differing_only_in_case_is_an_error_because_edgehub_delivers_by_exact_id():
    manifest = template()
    hub(manifest)["routes"]["sensorToInference"] = (
        'FROM /messages/modules/sensor/outputs/telemetry INTO BrokeredEndpoint("/modules/Inference/inputs/telemetry")'
    )
    problem = only_error(manifest)
    assert problem.where == 'route "sensorToInference"'
    assert "differ only in case" in problem.message
    assert "write inference" in problem.message


def test_a_third_party_manifest_is_checked_by_module_name_without_edgefleet_warnings():
    manifest = template()
    modules = agent(manifest)["modules"]
    spec = modules["sensor"]
    modules.clear()
    modules["turbofanRouter"] = copy.deepcopy(spec)
    modules["turbofanDeviceToCloud"] = copy.deepcopy(spec)
    for name in ("sensor", "inference", "fieldbroker"):
        manifest["modulesContent"].pop(name, None)
    to_router = 'BrokeredEndpoint("/modules/turbofanRouter/inputs/deviceInput")'
    to_cloud = 'BrokeredEndpoint("/modules/turbofanDeviceToCloud/inputs/in")'
    hub(manifest)["routes"] = {
        "toRouter": f"FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO {to_router}",
        # The public sample's spelling: edgeHub matches the source ignoring case.
        "classifier": f"FROM /messages/modules/turboFanRouter/outputs/classOutput INTO {to_cloud}",
        "typo": "FROM /messages/modules/turbofanRuoter/outputs/x INTO $upstream",
    }
    found = validate_deployment(manifest)
    assert [(p.severity, p.where) for p in found] == [
        ("warning", 'route "classifier"'),
        ("error", 'route "typo"'),
    ]


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ("FROM /messages/* INTO $upstream WHERE kind = 'x'", "ignores everything after the sink"),
        ("FROM /messages/events INTO $upstream", "no message ever comes from it"),
    ],
)
def test_routes_edgehub_accepts_but_gets_wrong_silently_are_errors(route, problem):
    manifest = template()
    hub(manifest)["routes"]["extra"] = route
    assert problem in only_error(manifest).message


def test_a_comment_opened_by_a_source_star_is_a_warning():
    manifest = template()
    hub(manifest)["routes"]["extra"] = "FROM /messages/* WHERE kind = 'x' /* note */ INTO $upstream"
    found = validate_deployment(manifest)
    assert errors(found) == []
    assert [w.where for w in warnings(found) if "as a comment" in w.message] == ['route "extra"']


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


def test_a_twin_for_a_module_that_is_not_deployed_is_reported():
    manifest = template()
    manifest["modulesContent"]["sensorr"] = {"properties.desired": {"enabled": True}}
    problem = only_error(manifest)
    assert problem.where == 'twin "sensorr"'
    assert "known: fieldbroker, sensor, inference" in problem.message


def test_a_twin_property_name_iot_hub_refuses_is_reported():
    manifest = template()
    manifest["modulesContent"]["sensor"]["properties.desired"]["batch.window"] = 1
    found = errors(validate_deployment(manifest))
    assert any(p.where == 'twin "sensor"' and "may not contain '.'" in p.message for p in found)


@pytest.mark.parametrize(
    ("module", "prop", "bad"),
    [
        ("sensor", "enabled", "no"),
        ("sensor", "batchWindowMs", "250"),
        ("sensor", "maxBatchBytes", 3900.5),
        ("inference", "poorModelThreshold", "1.0"),
        ("inference", "logLevel", "LOUD"),
    ],
)
def test_a_bad_desired_value_is_reported_naming_the_module_and_the_property(module, prop, bad):
    manifest = template()
    manifest["modulesContent"][module]["properties.desired"][prop] = bad
    problem = only_error(manifest)
    assert problem.where == f'twin "{module}"'
    assert f'desired property "{prop}"' in problem.message
    assert json.dumps(bad) in problem.message  # the value as written, next to how to fix it


def test_a_sensor_twin_without_a_field_topic_is_an_error_not_a_deaf_sensor():
    manifest = template()
    del manifest["modulesContent"]["sensor"]["properties.desired"]["fieldTopic"]
    problem = only_error(manifest)
    assert 'desired property "fieldTopic"' in problem.message


def test_a_template_placeholder_is_checked_once_the_manifest_is_built():
    manifest = template()  # expectedBundleVersion is "${BUNDLE_VERSION}" until built
    assert errors(validate_deployment(manifest)) == []
    variables = {"MODULES.sensor": "r/s:1", "MODULES.inference": "r/i:1", "MODULES.fieldbroker": "r/f:1"}
    variables["BUNDLE_VERSION"] = ""
    assert errors(validate_deployment(manifest, variables=variables)) == []  # empty: any bundle


def test_the_desired_properties_of_a_module_we_do_not_ship_are_not_checked():
    manifest = template()
    agent(manifest)["modules"]["thirdparty"] = copy.deepcopy(agent(manifest)["modules"]["sensor"])
    manifest["modulesContent"]["thirdparty"] = {"properties.desired": {"enabled": "no"}}
    assert errors(validate_deployment(manifest)) == []


def test_manifest_validate_main_names_the_module_and_property_of_a_bad_desired_value(tmp_path, capsys):
    manifest = template()
    manifest["modulesContent"]["sensor"]["properties.desired"]["enabled"] = "no"
    path = tmp_path / "deployment.template.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    assert main(["manifest", "validate", str(path)]) != 0
    out = capsys.readouterr().err
    assert 'twin "sensor"' in out and 'desired property "enabled"' in out


def test_manifest_validate_main_prints_ok_for_the_shipped_template(capsys):
    assert main(["manifest", "validate", str(TEMPLATE)]) == 0
    assert capsys.readouterr().out.strip() == "OK: 3 modules, 5 routes"


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
