"""The container end to end: the built images under docker-compose, with the simulator; nothing lost.

Runs only from `make container-test` (scripts/container_e2e.sh builds the images first and sets
EDGEFLEET_CONTAINER_E2E=1); `make test` skips it. One module-scoped compose project runs the
whole time; the tests read as the steps a user would take.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from edgefleet.bundle import verify_bundle
from edgefleet.lake import read_deadletters, read_lake
from edgefleet.messages import MODEL_KINDS
from edgefleet_cli.edge_report import account
from edgefleet_cli.local_edge import free_port

pytestmark = pytest.mark.skipif(
    os.environ.get("EDGEFLEET_CONTAINER_E2E") != "1",
    reason="container e2e: run `make container-test` (it builds the images first)",
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deployment" / "docker-compose.yml"
SERVICES = ("fieldbroker", "sink", "edgehub", "sensor", "inference", "dashboard")
SIM_DURATION_S = int(os.environ.get("EDGEFLEET_E2E_SIM_S", "60"))
INFERENCE_PAUSE_S = 10
HEALTHY_TIMEOUT_S = 180


def compose_command() -> list[str]:
    """Return docker-compose 1.x if installed, else Compose v2 (`docker compose`)."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


class Compose:
    """One compose project of deployment/docker-compose.yml, with its own name and subnet."""

    def __init__(self, project: str, env: dict[str, str]) -> None:
        self.project = project
        self.env = {**os.environ, **env}

    def run(self, *args: str, check: bool = True, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        command = [*compose_command(), "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def container(self, service: str) -> str:
        ids = self.run("ps", "-a", "-q", service).stdout.split()
        assert ids, f"no container for {service}"
        return ids[0]

    def inspect(self, service: str) -> dict[str, Any]:
        out = subprocess.run(
            ["docker", "inspect", self.container(service)], capture_output=True, text=True, check=True
        ).stdout
        return json.loads(out)[0]

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return str(state.get("Health", {}).get("Status", state["Status"]))

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "60", check=False).stdout

    def copy_out(self, service: str, path: str, dest: Path) -> Path:
        subprocess.run(
            ["docker", "cp", f"{self.container(service)}:{path}", str(dest)], check=True, capture_output=True
        )
        return dest


def leftovers(project: str) -> dict[str, list[str]]:
    """Return the project's containers, networks and volumes that still exist."""
    label = f"label=com.docker.compose.project={project}"
    found = {}
    for kind, command in {
        "containers": ["docker", "ps", "-a", "-q", "--filter", label],
        "networks": ["docker", "network", "ls", "-q", "--filter", label],
        "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
    }.items():
        found[kind] = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    return found


def wait_until(check: Any, timeout_s: float, what: str, compose: Compose, interval_s: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s:.0f} s (last: {value!r})\n{compose.logs()}")
        time.sleep(interval_s)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    project = f"edgefleet-e2e-{os.getpid()}"
    # The field broker's secrets and the module keys, provisioned as a user would (root here, as in CI).
    secrets_dir = tmp_path_factory.mktemp("secrets")
    env_file = secrets_dir / "compose.env"
    provision = [str(ROOT / ".venv" / "bin" / "edgefleet"), "compose", "secrets", "--image-owners"]
    subprocess.run(
        [*provision, "--dir", str(secrets_dir), "--env-file", str(env_file)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    keys = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    env = {
        **keys,
        "EDGEFLEET_SECRETS_DIR": str(secrets_dir),
        "EDGEFLEET_SUBNET": os.environ.get("EDGEFLEET_E2E_SUBNET", "172.29"),
        "SIM_DURATION_S": str(SIM_DURATION_S),
        "FIELD_MQTT_BIND": "127.0.0.1",
        "FIELD_MQTT_PORT": "0",  # any free host port: CI may already use 1883
        "LAKE_FLUSH_EVERY_S": "2",
        "DASHBOARD_PORT": str(free_port()),
        "RETRAIN_BUNDLE": os.environ["EDGEFLEET_E2E_BUNDLE"],
        "RETRAIN_OUT": str(tmp_path_factory.mktemp("retrain")),
    }
    compose = Compose(project, env)
    compose.run("down", "-v", "--remove-orphans", check=False)
    try:
        yield compose
    finally:
        compose.run("--profile", "retrain", "down", "-v", "--remove-orphans", check=False)


@pytest.fixture(scope="module")
def run_state() -> dict[str, Any]:
    return {}


def test_1_compose_up_starts_every_service_healthy(compose: Compose, run_state: dict[str, Any]) -> None:
    started = time.monotonic()
    # `up -d` returns once the simulator has started: it waits for the modules to be healthy first.
    compose.run("up", "-d", timeout_s=HEALTHY_TIMEOUT_S + 60)
    wait_until(
        lambda: all(compose.health(service) == "healthy" for service in SERVICES),
        HEALTHY_TIMEOUT_S,
        "every service healthy",
        compose,
    )
    run_state["healthy_after_s"] = round(time.monotonic() - started, 1)
    run_state["sim_started"] = time.monotonic()
    for service in SERVICES:
        config = compose.inspect(service)["Config"]
        image = config["Image"].split(":")[0].removeprefix("edgefleet-")
        assert config["User"] == image, f"{service} runs as {config['User']!r}, not its image's own user"


def test_2_stopping_inference_for_ten_seconds_mid_stream_loses_nothing(
    compose: Compose, run_state: dict[str, Any]
) -> None:
    time.sleep(max(0.0, run_state["sim_started"] + SIM_DURATION_S / 3 - time.monotonic()))
    assert compose.inspect("simulator")["State"]["Running"], "the simulator ended before the inference stop"
    compose.run("stop", "inference")
    assert not compose.inspect("inference")["State"]["Running"]
    time.sleep(INFERENCE_PAUSE_S)
    compose.run("start", "inference")
    wait_until(lambda: compose.health("inference") == "healthy", HEALTHY_TIMEOUT_S, "inference healthy again", compose)


def test_3_every_simulated_reading_reaches_the_lake_enriched(
    compose: Compose, run_state: dict[str, Any], tmp_path: Path
) -> None:
    container = compose.container("simulator")
    code = subprocess.run(
        ["docker", "wait", container], capture_output=True, text=True, timeout=SIM_DURATION_S * 4 + 120
    ).stdout.strip()
    assert code == "0", f"simulator exited {code}\n{compose.logs()}"
    report = json.loads(compose.copy_out("simulator", "/tmp/simulator-report.json", tmp_path / "r.json").read_text())
    expected = report["expected_at_edge"]
    assert expected["sent"] >= 1000

    def settled() -> dict[str, Any] | None:
        lake_dir = tmp_path / f"lake-{time.monotonic_ns()}"
        compose.copy_out("sink", "/lake", lake_dir)
        lake = read_lake(lake_dir)
        accounting = account(lake, read_deadletters(lake_dir), expected)
        run_state["accounting"], run_state["lake"] = accounting, lake
        return accounting if accounting["lost"] == 0 else None

    accounting = wait_until(settled, 120, "every expected reading predicted in the lake", compose, interval_s=3)
    lake: pd.DataFrame = run_state["lake"]
    predictions = lake[lake["source_module"] == "inference"]
    assert accounting["predicted"] == expected["expected_valid"]
    assert accounting["deadletters_by_reason"].get("non_finite", 0) == expected["deadletter_non_finite"]
    assert predictions["prediction_value"].notna().all()
    assert (predictions["edge_device"] == "edge1").all()
    assert set(predictions["prediction_model"]) <= MODEL_KINDS
    assert (predictions["prediction_model"] == "device").any()
    # every device that sent something is in the lake with predictions
    senders = {device for device, counts in report["devices"].items() if counts["sent"] > 0}
    assert set(predictions["device_id"]) == senders
    # raw telemetry is an opt-in route (telemetryToUpstream, `manifest build --raw-telemetry`): predictions,
    # which go up gzip-compressed, carry every reading
    assert (lake["source_module"] == "sensor").sum() == 0
    print(
        f"\ncontainer e2e: sent {expected['sent']}, expected at the edge {expected['expected_valid']}, "
        f"predicted {accounting['predicted']}, dead letters {accounting['deadletters_by_reason']}, "
        f"lost {accounting['lost']}, healthy after {run_state['healthy_after_s']} s"
    )


def test_4_the_dashboard_serves_the_fleet_on_its_published_port(compose: Compose) -> None:
    import urllib.request

    url = f"http://127.0.0.1:{compose.env['DASHBOARD_PORT']}/"
    with urllib.request.urlopen(url, timeout=10) as response:
        page = response.read().decode("utf-8", "replace")
    assert response.status == 200
    assert "bokeh" in page.lower()
    # it has been fed from the hub stream all along: its log shows no error
    logs = compose.run("logs", "--no-color", "dashboard").stdout
    assert "Traceback" not in logs and " ERROR " not in logs


def test_5_the_retrain_profile_writes_a_verified_bundle_from_the_lake(compose: Compose) -> None:
    out = Path(compose.env["RETRAIN_OUT"])
    # the job runs as RETRAIN_UID (10001): let it write there
    if os.geteuid() == 0:
        os.chown(out, 10001, 10001)
    else:
        out.chmod(0o777)
    result = compose.run("--profile", "retrain", "run", "--rm", "retrain", timeout_s=900, check=False)
    assert result.returncode == 0, f"retrain failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    bundle = out / "bundle-next"
    assert verify_bundle(bundle) == []
    assert (out / "bundle-next.deployment.json").is_file()


def test_6_compose_down_v_leaves_no_container_network_or_volume(compose: Compose) -> None:
    compose.run("--profile", "retrain", "down", "-v", "--remove-orphans")
    assert leftovers(compose.project) == {"containers": [], "networks": [], "volumes": []}
