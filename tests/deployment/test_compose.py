"""deployment/docker-compose.yml agrees with the manifest and the stand-in (no second hand-written list)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_training.__main__ import build_parser
from cloud_training.cli import retrain_settings
from edgefleet.deployment import DEFAULT_TEMPLATE, load_deployment
from edgefleet.hub_wire import HUB_DASHBOARD_USER, HUB_PUBLISHER_USER, parse_hub_address

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deployment" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deployment" / ".env.example"
DEFAULT = re.compile(r"\$\{([A-Z0-9_]+):-([^}]*)\}")
# A manifest module whose compose service has another name (IoT Edge module names have no '-').
COMPOSE_SERVICE: dict[str, str] = {}  # manifest module -> compose service, where the names differ


def expand_defaults(value: Any) -> Any:
    """Return a compose value with every `${NAME:-default}` replaced by its default."""
    if isinstance(value, str):
        return DEFAULT.sub(lambda m: m.group(2), value)
    if isinstance(value, list):
        return [expand_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_defaults(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return expand_defaults(yaml.safe_load(COMPOSE.read_text()))


def flags(command: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for arg in command:
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg.partition("=")
            found.setdefault(name, []).append(value)
    return found


def test_every_module_of_the_manifest_runs_in_compose_with_the_manifests_env(compose: dict[str, Any]) -> None:
    deployment = load_deployment(ROOT / DEFAULT_TEMPLATE)
    services = compose["services"]
    for module, spec in deployment.modules.items():
        name = COMPOSE_SERVICE.get(module, module)
        assert name in services, f"the manifest deploys {module}, compose does not run it (as {name})"
        env = services[name].get("environment", {})
        for key, value in spec.env.items():
            assert env.get(key) == value, f"{name}: {key} is {env.get(key)!r} in compose, {value!r} in the manifest"


def test_each_module_connects_to_the_stand_in_address_the_stand_in_certifies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    hosts = dict(value.split("=", 1) for value in flags(services["edgehub"]["command"])["--module-host"])
    edgehub_networks = services["edgehub"]["networks"]
    for module, host in hosts.items():
        env = services[module]["environment"]
        connection = dict(part.split("=", 1) for part in env["EdgeHubConnectionString"].split(";"))
        assert connection["GatewayHostName"] == host
        assert connection["ModuleId"] == module
        # the stand-in's fixed address is on a network the module shares with it
        shared = set(services[module]["networks"]) & set(edgehub_networks)
        assert any(edgehub_networks[net] and edgehub_networks[net].get("ipv4_address") == host for net in shared)


def test_modules_mount_the_published_ca_certificate_and_never_the_stand_ins_keys(compose: dict[str, Any]) -> None:
    services = compose["services"]
    export_dir = flags(services["edgehub"]["command"])["--ca-export-dir"][0]
    state_dir = flags(services["edgehub"]["command"])["--state-dir"][0]
    volumes = dict(reversed(mount.split(":")[:2]) for mount in services["edgehub"]["volumes"])
    ca_volume, state_volume = volumes[export_dir], volumes[str(Path(state_dir).parent)]
    assert ca_volume != state_volume
    for name, spec in services.items():
        if name == "edgehub":
            continue
        mounted = {mount.split(":")[0]: mount for mount in spec.get("volumes", [])}
        assert state_volume not in mounted, f"{name} mounts the stand-in's state (its private keys)"
        if "EdgeModuleCACertificateFile" in spec.get("environment", {}):
            target = mounted[ca_volume].split(":")[1]
            assert mounted[ca_volume].endswith(":ro")
            assert spec["environment"]["EdgeModuleCACertificateFile"] == f"{target}/ca.pem"


def test_the_stand_in_sends_upstream_to_the_sink_service_on_a_shared_network(compose: dict[str, Any]) -> None:
    services = compose["services"]
    host, port = parse_hub_address(flags(services["edgehub"]["command"])["--upstream-mqtt"][0])
    assert host == "sink"
    _, sink_port = parse_hub_address(flags(services["sink"]["command"])["--listen"][0])
    assert sink_port == port
    assert set(services["edgehub"]["networks"]) & set(services["sink"]["networks"])


def test_the_hub_broker_takes_logins_and_each_of_its_clients_mounts_only_its_own_secret(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    secrets = "./secrets/hub/"
    expected = {
        "sink": ("--users-file", "passwords"),
        "edgehub": ("--upstream-password-file", f"clients/{HUB_PUBLISHER_USER}.password"),
        "dashboard": ("--hub-password-file", f"clients/{HUB_DASHBOARD_USER}.password"),
    }
    for name, spec in services.items():
        hub_mounts = [mount for mount in spec.get("volumes", []) if mount.startswith(secrets)]
        if name not in expected:
            assert hub_mounts == [], f"{name} mounts a hub secret"
            continue
        flag, source = expected[name]
        target = flags(spec["command"])[flag][0]
        assert hub_mounts == [f"{secrets}{source}:{target}:ro"], name
    assert flags(services["edgehub"]["command"])["--upstream-username"] == [HUB_PUBLISHER_USER]
    assert flags(services["dashboard"]["command"])["--hub-username"] == [HUB_DASHBOARD_USER]
    assert "--allow-anonymous" not in services["sink"]["command"]


def test_the_lake_is_a_named_volume_and_retraining_is_an_opt_in_profile(compose: dict[str, Any]) -> None:
    assert "lake" in compose["volumes"]
    assert "lake:/lake" in compose["services"]["sink"]["volumes"]
    assert compose["services"]["retrain"]["profiles"] == ["retrain"]
    assert all("profiles" not in spec for name, spec in compose["services"].items() if name != "retrain")


def test_the_retrain_service_runs_a_valid_retraining_job_of_the_training_entry_point(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = build_parser().parse_args(compose["services"]["retrain"]["command"])
    settings = retrain_settings(args)
    assert args.command == "retrain"
    assert (settings.lake, settings.bundle) == (Path("/lake"), Path("/bundle"))
    assert settings.tracking_uri == "sqlite:////out/mlflow.db"


def test_every_variable_compose_reads_is_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))
    assert used - documented == set(), "document these in deployment/.env.example"
    assert documented - used == set(), "deployment/.env.example documents variables compose does not read"


def test_env_example_shows_the_defaults_compose_uses() -> None:
    defaults = dict(DEFAULT.findall(COMPOSE.read_text()))
    example = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M))
    assert example == defaults
