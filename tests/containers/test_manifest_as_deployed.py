"""The built manifest, run as IoT Edge would run it: exactly its modules under compose, the simulator over TLS.

`edgefleet manifest build` writes the manifest for the images scripts/build_images.sh made, `edgefleet
field init` provisions the field secrets, `edgefleet manifest compose` translates the manifest (the
field directory remapped to the test's, the field port on any free loopback port) and compose runs
it. Field devices reach the field broker as they would on a device: through the manifest's port
binding, over TLS, with the gateway identity. Runs only from `make container-test`
(scripts/container_e2e.sh builds the images first and sets EDGEFLEET_CONTAINER_E2E=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.deployment import load_deployment
from edgefleet.lake import read_deadletters, read_lake
from edgefleet_cli.edge_report import account
from tests.containers.test_compose_e2e import compose_command, leftovers

pytestmark = pytest.mark.skipif(
    os.environ.get("EDGEFLEET_CONTAINER_E2E") != "1",
    reason="container e2e: run `make container-test` (it builds the images first)",
)

ROOT = Path(__file__).resolve().parents[2]
FIELD_DIR_ON_DEVICE = "/etc/edgefleet/field"  # where the manifest binds the field secrets from
MANIFEST_FIELD_PORT = 8884  # the field broker's host port in the manifest
SIM_DURATION_S = 20
HEALTHY_TIMEOUT_S = 150
SYSTEM_SERVICES = ("edgehub", "sink")


def edgefleet(*args: str, timeout_s: float = 180) -> str:
    """Run the `edgefleet` CLI of this checkout from the repository root; return its output."""
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet_cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
    )
    assert result.returncode == 0, f"edgefleet {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


class Project:
    """One compose project of the translated manifest."""

    def __init__(self, name: str, compose_file: Path, env: dict[str, str]) -> None:
        self.name = name
        self.compose_file = compose_file
        self.env = {**os.environ, **env}

    def run(self, *args: str, check: bool = True, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        command = [*compose_command(), "-f", str(self.compose_file), "-p", self.name, *args]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def inspect(self, service: str) -> dict[str, Any]:
        ids = self.run("ps", "-a", "-q", service).stdout.split()
        assert ids, f"no container for {service}\n{self.logs()}"
        out = subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True, check=True).stdout
        info: dict[str, Any] = json.loads(out)[0]
        return info

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return str(state.get("Health", {}).get("Status", state["Status"]))

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "40", check=False).stdout

    def wait(self, check: Any, timeout_s: float, what: str, interval_s: float = 2.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"{what} within {timeout_s:.0f} s (last: {value!r})\n{self.logs()}")
            time.sleep(interval_s)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("as-deployed")


@pytest.fixture(scope="module")
def manifest(work: Path) -> Path:
    """The deployed manifest for the images the build made (the inference image tagged with the bundle)."""
    out = work / "deployment.json"
    edgefleet("manifest", "build", "--bundle", os.environ["EDGEFLEET_E2E_BUNDLE"], "--out", str(out))
    return out


@pytest.fixture(scope="module")
def project(work: Path, manifest: Path) -> Iterator[Project]:
    field_dir = work / "field"  # `compose secrets` provisions the field broker's directory there
    env_file = work / "compose.env"
    edgefleet("compose", "secrets", "--dir", str(work), "--env-file", str(env_file), "--image-owners")
    keys = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    compose_file = work / "compose.yml"
    edgefleet(
        "manifest",
        "compose",
        "--manifest",
        str(manifest),
        "--out",
        str(compose_file),
        "--host-path",
        f"{FIELD_DIR_ON_DEVICE}={field_dir}",
        "--port",
        f"{MANIFEST_FIELD_PORT}=0",
        "--subnet",
        os.environ.get("EDGEFLEET_E2E_MANIFEST_SUBNET", "172.30"),
        "--secrets-dir",
        str(work),
    )
    project = Project(f"edgefleet-as-deployed-{os.getpid()}", compose_file, keys)
    project.run("down", "-v", "--remove-orphans", check=False)
    try:
        yield project
    finally:
        project.run("down", "-v", "--remove-orphans", check=False)


@pytest.fixture(scope="module")
def run_state() -> dict[str, Any]:
    return {}


def test_1_compose_runs_exactly_the_manifests_modules_healthy_as_the_manifest_configures_them(
    project: Project, manifest: Path, work: Path, run_state: dict[str, Any]
) -> None:
    deployment = load_deployment(manifest)
    assert "fieldbroker" in deployment.modules
    services = set(yaml.safe_load(project.compose_file.read_text())["services"])
    assert services == {*deployment.modules, *SYSTEM_SERVICES}
    started = time.monotonic()
    project.run("up", "-d", timeout_s=HEALTHY_TIMEOUT_S + 60)
    project.wait(
        lambda: all(project.health(service) == "healthy" for service in services),
        HEALTHY_TIMEOUT_S,
        "every module and the stand-in healthy",
    )
    run_state["healthy_after_s"] = round(time.monotonic() - started, 1)
    field_dir = str(work / "field")
    for name, spec in deployment.modules.items():
        container = project.inspect(name)
        assert container["Config"]["Image"] == spec.image
        env = dict(item.split("=", 1) for item in container["Config"]["Env"])
        assert {key: env.get(key) for key in spec.env} == spec.env
        mounts = {mount["Destination"]: mount for mount in container["Mounts"]}
        for bind in spec.create_options.get("HostConfig", {}).get("Binds", []):
            source, destination = bind.split(":")[:2]
            mount = mounts[destination]
            if source.startswith("/"):
                assert mount["Source"] == source.replace(FIELD_DIR_ON_DEVICE, field_dir, 1)
            else:
                assert mount["Name"] == f"{project.name}_{source}"
            assert mount["RW"] is not bind.endswith(":ro")
        host_config = container["HostConfig"]
        for key in ("Memory", "MemorySwap"):
            if key in spec.create_options.get("HostConfig", {}):
                assert host_config[key] == spec.create_options["HostConfig"][key]
        for port in spec.create_options.get("HostConfig", {}).get("PortBindings", {}):
            assert [binding["HostIp"] for binding in host_config["PortBindings"][port]] == ["127.0.0.1"]


def field_port(project: Project) -> int:
    address = project.run("port", "fieldbroker", "8883").stdout.strip()
    host, _, port = address.rpartition(":")
    assert host == "127.0.0.1", f"the field port is published on {host}, not loopback"
    return int(port)


def test_2_an_anonymous_client_is_refused_at_the_published_field_port(project: Project, work: Path) -> None:
    import paho.mqtt.client as mqtt

    from edgefleet.mqtt_login import tls_context

    answered = threading.Event()
    codes: list[int] = []

    def on_connect(client: Any, userdata: Any, flags: Any, rc: int) -> None:
        codes.append(rc)
        answered.set()

    client = mqtt.Client(client_id="anonymous-probe")
    client.tls_set_context(tls_context(work / "field" / "ca.pem"))
    client.on_connect = on_connect
    client.connect("127.0.0.1", field_port(project))
    client.loop_start()
    try:
        assert answered.wait(15), "the field broker never answered the CONNECT"
    finally:
        client.loop_stop()
        client.disconnect()
    assert codes[0] in (mqtt.CONNACK_REFUSED_NOT_AUTHORIZED, mqtt.CONNACK_REFUSED_BAD_USERNAME_PASSWORD)


def test_3_every_reading_the_simulator_sends_over_tls_as_the_gateway_reaches_the_lake(
    project: Project, work: Path, run_state: dict[str, Any]
) -> None:
    profile = yaml.safe_load((ROOT / "simulator" / "profiles" / "demo.yaml").read_text())
    profile["start_ts"] = "now"  # the sensor dead-letters readings dated more than a week ago
    profile_path = work / "profile.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    field = work / "field"
    report_path = work / "simulator-report.json"
    edgefleet(
        "simulate",
        f"--profile={profile_path}",
        "--host=127.0.0.1",
        f"--port={field_port(project)}",
        f"--ca-file={field / 'ca.pem'}",
        "--username=edgefleet-gateway",
        f"--password-file={field / 'clients' / 'edgefleet-gateway.password'}",
        f"--duration-s={SIM_DURATION_S}",
        f"--report={report_path}",
        timeout_s=SIM_DURATION_S * 4 + 60,
    )
    expected = json.loads(report_path.read_text())["expected_at_edge"]
    assert expected["sent"] >= 1000

    def settled() -> dict[str, Any] | None:
        lake_dir = work / f"lake-{time.monotonic_ns()}"
        container = project.inspect("sink")["Id"]
        subprocess.run(["docker", "cp", f"{container}:/lake", str(lake_dir)], check=True, capture_output=True)
        accounting = account(read_lake(lake_dir), read_deadletters(lake_dir), expected)
        run_state["accounting"] = accounting
        return accounting if accounting["lost"] == 0 else None

    accounting = project.wait(settled, 90, "every expected reading predicted in the lake", interval_s=3)
    assert accounting["predicted"] == expected["expected_valid"]
    print(
        f"\nmanifest as deployed: sent {expected['sent']}, expected at the edge {expected['expected_valid']}, "
        f"predicted {accounting['predicted']}, dead letters {accounting['deadletters_by_reason']}, "
        f"lost {accounting['lost']}, healthy after {run_state['healthy_after_s']} s"
    )


def test_4_compose_down_v_leaves_no_container_network_or_volume(project: Project) -> None:
    project.run("down", "-v", "--remove-orphans")
    assert leftovers(project.name) == {"containers": [], "networks": [], "volumes": []}
