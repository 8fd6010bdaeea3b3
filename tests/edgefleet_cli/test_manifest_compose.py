"""`edgefleet manifest compose`: the built manifest becomes a compose file running exactly its modules."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.deployment import DEFAULT_TEMPLATE, deployed_form, load_deployment, write_deployment_manifest
from edgefleet.hub_wire import HUB_PUBLISHER_USER
from edgefleet_cli.cli import main
from edgefleet_cli.manifest_compose import (
    EDGE_NETWORK,
    ComposeOptions,
    ManifestComposeError,
    manifest_to_compose,
)
from edgehub.settings import parse_flags
from edgehub.sink_settings import parse_flags as parse_sink_flags

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / DEFAULT_TEMPLATE
IMAGES = {
    "MODULES.sensor": "edgefleet-sensor:0.1.0",
    "MODULES.inference": "edgefleet-inference:v7",
    "MODULES.fieldbroker": "edgefleet-field-broker:0.1.0",
    "BUNDLE_VERSION": "v7",
}
OPTIONS = ComposeOptions(manifest_path=Path("/srv/edge/deployment.json"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The repository's template as `edgefleet manifest build` writes it."""
    out = write_deployment_manifest(TEMPLATE, tmp_path_factory.mktemp("built") / "deployment.json", IMAGES)
    manifest: dict[str, Any] = json.loads(out.read_text())
    return manifest


def modules_of(manifest: dict[str, Any]) -> dict[str, Any]:
    modules: dict[str, Any] = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    return modules


def deployed_with(built: dict[str, Any], module: str, **changes: Any) -> dict[str, Any]:
    """Return the built manifest with one module's entry changed (createOptions given as an object)."""
    raw = json.loads(TEMPLATE.read_text())
    for name, spec in modules_of(raw).items():
        spec["settings"]["image"] = modules_of(built)[name]["settings"]["image"]
    raw["modulesContent"]["inference"]["properties.desired"]["expectedBundleVersion"] = "v7"
    spec = modules_of(raw)[module]
    for key, value in changes.items():
        if key == "createOptions":
            spec["settings"]["createOptions"] = value
        else:
            spec[key] = value
    return deployed_form(raw)


def translate(manifest: dict[str, Any], **options: Any) -> dict[str, Any]:
    return manifest_to_compose(manifest, ComposeOptions(**{"manifest_path": OPTIONS.manifest_path, **options}))


def test_every_module_of_the_built_template_runs_with_its_image_and_exactly_the_manifests_env(built):
    services = translate(built)["services"]
    deployment = load_deployment(TEMPLATE, IMAGES)
    assert set(services) == {*deployment.modules, "edgehub", "sink"}
    for name, spec in deployment.modules.items():
        assert services[name]["image"] == spec.image
        env = services[name].get("environment", {})
        assert {key: env[key] for key in spec.env} == spec.env
        # nothing but the manifest's env and the stand-in's two development variables
        assert set(env) - set(spec.env) <= {"EdgeHubConnectionString", "EdgeModuleCACertificateFile"}
        assert services[name]["networks"].keys() >= {EDGE_NETWORK}
    assert "MAX_READING_AGE_S" not in services["sensor"]["environment"]


def test_createoptions_split_in_512_character_pieces_round_trip_into_every_bind(built):
    binds = [f"/data/volume-{i:03d}:/mnt/volume-{i:03d}:ro" for i in range(30)] + ["inference-models:/models"]
    manifest = deployed_with(built, "inference", createOptions={"HostConfig": {"Binds": binds, "Memory": 1 << 30}})
    settings = modules_of(manifest)["inference"]["settings"]
    assert "createOptions02" in settings  # really split, as IoT Hub takes it
    compose = translate(manifest)
    inference = compose["services"]["inference"]
    assert inference["volumes"] == ["edgehub-ca:/run/edgehub:ro", *binds]
    assert inference["mem_limit"] == 1 << 30
    assert "inference-models" in compose["volumes"]


def test_binds_ports_memory_and_restart_policy_are_mapped_as_docker_would_apply_them(built):
    options = {
        "HostConfig": {
            "Binds": ["state:/var/lib/x", "/etc/edgefleet/field/ca.pem:/run/ca.pem:ro", "/opt/other:/opt/other"],
            "PortBindings": {
                "8883/tcp": [{"HostPort": "8884"}],
                "9000/udp": [{"HostPort": "9000", "HostIp": "0.0.0.0"}],
                "80/tcp": [{"HostPort": "8080"}],
            },
            "Memory": 268435456,
            "MemorySwap": 536870912,
        }
    }
    manifest = deployed_with(built, "sensor", createOptions=options, restartPolicy="never")
    compose = translate(manifest, host_paths={"/etc/edgefleet/field": "/tmp/t/field"}, ports={8884: 0, 8080: 18080})
    sensor = compose["services"]["sensor"]
    assert sensor["volumes"][1:] == ["state:/var/lib/x", "/tmp/t/field/ca.pem:/run/ca.pem:ro", "/opt/other:/opt/other"]
    assert "state" in compose["volumes"]
    assert sensor["ports"] == ["127.0.0.1::8883", "0.0.0.0:9000:9000/udp", "127.0.0.1:18080:80"]
    assert (sensor["mem_limit"], sensor["memswap_limit"]) == (268435456, 536870912)
    assert sensor["restart"] == "no"
    restarts = {
        policy: translate(deployed_with(built, "sensor", restartPolicy=policy))["services"]["sensor"]["restart"]
        for policy in ("always", "on-failure", "on-unhealthy", "never")
    }
    assert restarts == {"always": "always", "on-failure": "on-failure", "on-unhealthy": "always", "never": "no"}


def test_the_built_template_publishes_the_field_broker_on_loopback_with_its_config_dir_remapped(built):
    compose = translate(built, host_paths={"/etc/edgefleet/field": "/tmp/e2e/field"}, ports={8884: 18884})
    fieldbroker = compose["services"]["fieldbroker"]
    assert fieldbroker["ports"] == ["127.0.0.1:18884:8883"]
    assert "/tmp/e2e/field:/etc/edgefleet/field:ro" in fieldbroker["volumes"]
    sensor_binds = compose["services"]["sensor"]["volumes"]
    assert "/tmp/e2e/field/clients/edgefleet-sensor.password:/run/secrets/field/password:ro" in sensor_binds
    assert compose["services"]["inference"]["mem_limit"] == 536870912
    assert translate(built, publish_address="0.0.0.0")["services"]["fieldbroker"]["ports"] == ["0.0.0.0:8884:8883"]


def test_a_stopped_module_is_deployed_but_never_started_nor_waited_for(built):
    manifest = deployed_with(built, "inference", status="stopped")
    services = translate(manifest)["services"]
    assert services["inference"]["scale"] == 0
    assert "depends_on" not in services["inference"]
    assert "inference" not in services["sensor"]["depends_on"]
    assert "scale" not in services["sensor"]


def test_startup_order_starts_lower_orders_first_and_edgehub_clients_wait_for_a_healthy_stand_in(built):
    services = translate(built)["services"]
    # template: fieldbroker 0, inference 1, sensor 2; the stand-in (edgeHub) 0
    assert "depends_on" not in services["fieldbroker"]
    assert services["inference"]["depends_on"] == {
        "edgehub": {"condition": "service_healthy"},
        "fieldbroker": {"condition": "service_started"},
    }
    assert set(services["sensor"]["depends_on"]) == {"edgehub", "fieldbroker", "inference"}
    assert services["edgehub"]["depends_on"] == {"sink": {"condition": "service_healthy"}}


def test_modules_reach_their_own_stand_in_broker_at_the_address_it_certifies_and_the_field_broker_none(built):
    compose = translate(built, subnet="172.31")
    services = compose["services"]
    standin = services["edgehub"]
    flags = parse_flags(standin["command"])  # the stand-in's own parser takes the command
    hosts = dict(pair.split("=", 1) for pair in flags["module_hosts"])
    assert set(hosts) == {"sensor", "inference"}
    for module, host in hosts.items():
        env = services[module]["environment"]
        connection = dict(part.split("=", 1) for part in env["EdgeHubConnectionString"].split(";"))
        assert (connection["GatewayHostName"], connection["ModuleId"]) == (host, module)
        assert env["EdgeModuleCACertificateFile"] == "/run/edgehub/ca.pem"
        assert "edgehub-ca:/run/edgehub:ro" in services[module]["volumes"]
        network = f"edgehub-{module}"
        assert standin["networks"][network] == {"ipv4_address": host}
        assert network in services[module]["networks"]
        assert compose["networks"][network]["internal"] is True
        assert host.startswith("172.31.")
    fieldbroker = services["fieldbroker"]
    assert "environment" not in fieldbroker
    assert not any("edgehub" in volume for volume in fieldbroker["volumes"])
    assert set(fieldbroker["networks"]) == {EDGE_NETWORK}


def test_the_stand_in_reads_the_manifest_itself_read_only_and_sends_upstream_to_the_sink(built):
    services = translate(built)["services"]
    flags = parse_flags(services["edgehub"]["command"])
    assert f"{OPTIONS.manifest_path}:{flags['deployment']}:ro" in services["edgehub"]["volumes"]
    assert flags["upstream_mqtt"] == "sink:1883"
    assert services["sink"]["volumes"][0] == "lake:/lake"


def test_the_sink_takes_the_hub_users_and_the_stand_in_logs_in_each_mounting_only_its_own_secret(built, tmp_path):
    services = translate(built, secrets_dir=tmp_path / "secrets")["services"]
    hub = tmp_path / "secrets" / "hub"
    sink_flags = parse_sink_flags(services["sink"]["command"])
    standin_flags = parse_flags(services["edgehub"]["command"])

    assert f"{hub / 'passwords'}:{sink_flags['users_file']}:ro" in services["sink"]["volumes"]
    assert standin_flags["upstream_username"] == HUB_PUBLISHER_USER
    password = f"{hub / 'clients' / 'edgefleet-edgehub.password'}:{standin_flags['upstream_password_file']}:ro"
    assert password in services["edgehub"]["volumes"]
    for name, service in services.items():
        hub_mounts = [volume for volume in service.get("volumes", []) if volume.startswith(str(hub))]
        assert len(hub_mounts) == (1 if name in ("sink", "edgehub") else 0), (name, hub_mounts)


def test_dollar_signs_in_the_manifest_reach_the_container_verbatim(built):
    raw = copy.deepcopy(built)
    modules_of(raw)["inference"]["env"]["GREETING"] = {"value": "costs $5, paid by $USER"}
    env = translate(raw)["services"]["inference"]["environment"]
    assert env["GREETING"] == "costs $$5, paid by $$USER"  # compose turns $$ back into $


def test_a_template_with_unfilled_placeholders_is_refused_saying_to_build_it_first():
    raw = json.loads(TEMPLATE.read_text())
    with pytest.raises(ManifestComposeError, match=r"\$\{MODULES\.\w+\}.*edgefleet manifest build"):
        translate(raw)


def test_create_options_the_translation_does_not_know_are_refused_rather_than_dropped(built):
    manifest = deployed_with(built, "inference", createOptions={"HostConfig": {"Devices": [{"PathOnHost": "/dev/x"}]}})
    with pytest.raises(ManifestComposeError, match=r"inference.*Devices cannot be translated"):
        translate(manifest)


def test_a_port_or_host_path_override_the_manifest_does_not_use_is_reported_as_a_likely_typo(built):
    with pytest.raises(ManifestComposeError, match="--port 8883"):
        translate(built, ports={8883: 0})
    with pytest.raises(ManifestComposeError, match="--host-path /etc/edgefleet/feild"):
        translate(built, host_paths={"/etc/edgefleet/feild": "/tmp/x"})


def test_the_command_writes_a_compose_file_and_bad_flags_get_a_message_not_a_traceback(built, tmp_path, capsys):
    manifest = tmp_path / "deployment.json"
    manifest.write_text(json.dumps(built))
    out = tmp_path / "compose.yml"
    args = ["manifest", "compose", "--manifest", str(manifest), "--out", str(out)]
    assert main([*args, "--port", "8884=0", "--host-path", "/etc/edgefleet/field=/srv/field"]) == 0
    compose = yaml.safe_load(out.read_text())
    assert compose["version"] == "2.4"
    assert compose["services"]["fieldbroker"]["ports"] == ["127.0.0.1::8883"]
    assert out.read_text().startswith("# Generated by `edgefleet manifest compose`")
    assert main([*args, "--port", "8884"]) == 2
    assert "MANIFEST_HOST_PORT=HOST_PORT" in capsys.readouterr().err
    assert main(["manifest", "compose", "--manifest", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
