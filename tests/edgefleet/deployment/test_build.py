"""`edgefleet manifest build`: a deployable manifest from the template, module.json files and a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.bundle import read_manifest
from edgefleet.deployment import (
    DEFAULT_TEMPLATE,
    DeploymentError,
    build_variables,
    load_deployment,
    write_deployment_manifest,
)

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = REPO / DEFAULT_TEMPLATE
MODULES = REPO / "modules"


def test_manifest_takes_images_from_module_json_and_the_bundle_version(small_bundle, tmp_path):
    version = read_manifest(small_bundle).bundle_version
    variables = build_variables(TEMPLATE, bundle_dir=small_bundle, registry="myacr.azurecr.io", modules_dir=MODULES)
    out = write_deployment_manifest(TEMPLATE, tmp_path / "deployment.json", variables)
    deployment = load_deployment(out)
    assert deployment.modules["inference"].image == f"myacr.azurecr.io/edgefleet-inference:{version}"
    assert deployment.modules["sensor"].image == "myacr.azurecr.io/edgefleet-sensor:0.1.0"
    assert deployment.modules["fieldbroker"].image == "myacr.azurecr.io/edgefleet-field-broker:0.1.0"
    assert deployment.desired("inference")["expectedBundleVersion"] == version
    raw = json.loads(out.read_text())
    options = raw["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["inference"]["settings"]
    assert isinstance(options["createOptions"], str)  # deployed form: a JSON string


def test_the_built_manifest_routes_raw_telemetry_upstream_only_when_asked(small_bundle, tmp_path):
    variables = build_variables(TEMPLATE, bundle_dir=small_bundle, modules_dir=MODULES)
    plain = load_deployment(write_deployment_manifest(TEMPLATE, tmp_path / "plain.json", variables))
    raw = load_deployment(write_deployment_manifest(TEMPLATE, tmp_path / "raw.json", variables, raw_telemetry=True))

    def upstream_sources(deployment):
        return {(r.source.module, r.source.output) for r in deployment.routes if r.sink.kind == "upstream"}

    assert ("sensor", "telemetry") not in upstream_sources(plain)
    assert upstream_sources(raw) == upstream_sources(plain) | {("sensor", "telemetry")}


def test_long_create_options_are_split_into_512_character_chunks_that_read_back_whole(tmp_path):
    raw = json.loads(TEMPLATE.read_text())
    binds = [f"/data/volume-{i:03d}:/mnt/volume-{i:03d}" for i in range(30)]
    inference = raw["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["inference"]
    inference["settings"]["createOptions"] = {"HostConfig": {"Binds": binds}}
    template = tmp_path / "template.json"
    template.write_text(json.dumps(raw))
    out = write_deployment_manifest(
        template,
        tmp_path / "out.json",
        {"MODULES.sensor": "s:1", "MODULES.inference": "i:1", "MODULES.fieldbroker": "f:1", "BUNDLE_VERSION": "v1"},
    )
    settings = json.loads(out.read_text())["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"][
        "inference"
    ]["settings"]
    chunks = [settings[key] for key in sorted(settings) if key.startswith("createOptions")]
    assert len(chunks) >= 2 and all(len(chunk) <= 512 for chunk in chunks)
    assert json.loads("".join(chunks)) == {"HostConfig": {"Binds": binds}}
    assert load_deployment(out).modules["inference"].create_options == {"HostConfig": {"Binds": binds}}


def test_given_values_win_over_derived_ones_and_the_environment_fills_the_rest(tmp_path):
    raw = json.loads(TEMPLATE.read_text())
    raw["modulesContent"]["sensor"]["properties.desired"]["fieldTopic"] = "${FIELD_TOPIC}"
    template = tmp_path / "template.json"
    template.write_text(json.dumps(raw))
    variables = build_variables(
        template,
        given={"BUNDLE_VERSION": "given-1"},
        modules_dir=MODULES,
        environment={"FIELD_TOPIC": "site-7/+/telemetry", "UNRELATED": "x"},
    )
    assert variables["BUNDLE_VERSION"] == "given-1"
    assert variables["FIELD_TOPIC"] == "site-7/+/telemetry"
    assert "UNRELATED" not in variables


def test_a_route_naming_a_missing_input_fails_the_build_naming_the_route(tmp_path):
    raw = json.loads(TEMPLATE.read_text())
    routes = raw["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
    routes["typo"] = (
        'FROM /messages/modules/sensor/outputs/telemetry INTO BrokeredEndpoint("/modules/inference/inputs/telemtry")'
    )
    template = tmp_path / "template.json"
    template.write_text(json.dumps(raw))
    with pytest.raises(DeploymentError, match="typo"):
        write_deployment_manifest(
            template,
            tmp_path / "out.json",
            {"MODULES.sensor": "s:1", "MODULES.inference": "i:1", "MODULES.fieldbroker": "f:1", "BUNDLE_VERSION": "v"},
        )
    assert not (tmp_path / "out.json").exists()
