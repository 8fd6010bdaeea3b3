"""`python -m edgehub`, the stand-in image's command: it serves until SIGTERM and refuses bad settings clearly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from edgefleet.deployment import with_raw_telemetry_route
from edgefleet_cli.local_edge import free_port
from tests.edge_fixtures import module_identity_in, module_mqtt_client, reading
from tests.hub_logins import HubLogins

from .conftest import next_ip_base, wait_for

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deployment" / "deployment.template.json"


def edgehub(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgehub", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_the_stand_in_serves_the_manifest_modules_until_sigterm_and_writes_their_env_files(tmp_path: Path) -> None:
    ip_base = next_ip_base()
    health_file = tmp_path / "healthy"
    process = edgehub(
        "--deployment", TEMPLATE, "--state-dir", tmp_path / "state", "--lake", tmp_path / "lake",
        "--ip-base", ip_base, "--health-file", health_file,
    )  # fmt: skip
    try:
        wait_for(lambda: health_file.exists() or process.poll() is not None, timeout_s=60)
        assert process.poll() is None, process.communicate()[1]
        env_file = tmp_path / "state" / "modules" / "inference.env"
        assert f"GatewayHostName={ip_base}.11;" in env_file.read_text()
        assert (tmp_path / "state" / "modules" / "sensor.env").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--upstream-mqtt", "sink"], {}, "EDGEHUB_UPSTREAM_MQTT: 'sink' is not HOST:PORT; write e.g. sink:1883"),
        ([], {"EDGEHUB_IP_BASE": "10.0.0"}, "EDGEHUB_IP_BASE: ip_base '10.0.0' must be the first three octets of"),
        (["--deployment", "nowhere.json"], {}, "pass --deployment PATH or set EDGEHUB_DEPLOYMENT"),
        (["--module-host", "sensor"], {}, "write each module's address as MODULE=IP"),
        ([], {"EDGEHUB_LOG_LEVEL": "LOUD"}, "EDGEHUB_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        (
            ["--upstream-mqtt", "sink:1883"],
            {},
            "the hub broker takes no anonymous clients: pass --upstream-password-file PATH",
        ),
        (
            ["--upstream-mqtt", "sink:1883", "--upstream-password-file", "/nowhere/password"],
            {},
            "EDGEHUB_UPSTREAM_PASSWORD_FILE: /nowhere/password does not exist: mount the secret file there",
        ),
    ],
    ids=[
        "hub-address-without-port",
        "ip-base-off-loopback",
        "missing-manifest",
        "module-host-without-ip",
        "log-level",
        "hub-without-password",
        "hub-password-file-missing",
    ],
)
def test_a_bad_setting_exits_2_saying_how_to_fix_it_without_a_traceback(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    process = edgehub(*args, env=env)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 2
    assert err.startswith("edgehub: invalid EdgeHubSettings:")
    assert expected in err
    assert "Traceback" not in err


def test_help_lists_the_flags_and_exits_0() -> None:
    process = edgehub("--help")
    out, _ = process.communicate(timeout=60)

    assert process.returncode == 0
    assert "--upstream-mqtt HOST:PORT" in out and "--module-host MODULE=IP" in out


SENSOR_TELEMETRY = "devices/edge1/modules/sensor/messages/events/%24.on=telemetry&%24.ct=application%2Fjson"


def publish_as_sensor(ip_base: str, state_dir: Path, bodies: list[bytes]) -> None:
    """Publish events at QoS 1 on the sensor's broker, as the module does, and wait for every PUBACK."""
    client = module_mqtt_client(module_identity_in(state_dir, "sensor"), state_dir / "certs" / "ca.pem")
    client.connect(f"{ip_base}.10", 8883)
    client.loop_start()
    try:
        infos = [client.publish(SENSOR_TELEMETRY, body, qos=1) for body in bodies]
        for info in infos:
            info.wait_for_publish(timeout=20)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def lake_seqs(lake_dir: Path) -> list[int]:
    return sorted(pd.read_parquet(lake_dir)["seq"]) if list(lake_dir.glob("date=*/*.parquet")) else []


def test_messages_the_stand_in_took_while_the_hub_was_away_survive_a_kill_9(
    tmp_path: Path, hub_logins: HubLogins
) -> None:
    count = 200
    ip_base, hub_port = next_ip_base(), free_port()
    state, health_file = tmp_path / "state", tmp_path / "healthy"
    # The sensor's readings go upstream by the opt-in raw telemetry route.
    manifest = tmp_path / "deployment.json"
    manifest.write_text(json.dumps(with_raw_telemetry_route(json.loads(TEMPLATE.read_text()))))
    args = (
        "--deployment", manifest, "--state-dir", state, "--ip-base", ip_base,
        "--upstream-mqtt", f"127.0.0.1:{hub_port}", *hub_logins.standin_flags(), "--health-file", health_file,
    )  # fmt: skip
    standin = edgehub(*args)
    sink: subprocess.Popen[str] | None = None
    try:
        # Not healthy (its upstream is away on purpose): ready once it wrote the modules' env files.
        env_file = state / "modules" / "inference.env"
        wait_for(lambda: env_file.exists() or standin.poll() is not None, timeout_s=60)
        assert standin.poll() is None, standin.communicate()[1]
        bodies = [json.dumps(reading("dev-1", seq)).encode() for seq in range(count)]
        publish_as_sensor(ip_base, state, bodies)
        time.sleep(1.0)  # the router takes them off the broker in milliseconds; the hub is not there
        standin.kill()
        standin.communicate(timeout=30)

        sink_args = (
            "--listen", f"127.0.0.1:{hub_port}", "--lake", tmp_path / "lake", "--state-dir", tmp_path / "sink",
            "--flush-every-s", 0.2, "--roll-every-s", 0.2, *hub_logins.sink_flags(),
        )  # fmt: skip
        sink = subprocess.Popen(
            [sys.executable, "-m", "edgehub.sink_service", *map(str, sink_args)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        standin = edgehub(*args)
        wait_for(lambda: len(set(lake_seqs(tmp_path / "lake"))) >= count or standin.poll() is not None, 60)
    finally:
        for process in (standin, sink):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.communicate(timeout=60)

    seqs = lake_seqs(tmp_path / "lake")
    assert set(seqs) == set(range(count))  # 0 lost
    print(f"stand-in kill -9: {count} sent, {count - len(set(seqs))} lost, {len(seqs) - len(set(seqs))} duplicates")


def test_a_world_readable_module_keys_file_stops_the_start_saying_how_to_fix_it(tmp_path: Path) -> None:
    keys = tmp_path / "module-keys"
    keys.write_text("sensor=" + "A" * 43 + "=\n")
    keys.chmod(0o644)

    process = edgehub(
        "--deployment", TEMPLATE, "--state-dir", tmp_path / "state", "--lake", tmp_path / "lake",
        "--ip-base", next_ip_base(), "--module-keys-file", keys,
    )  # fmt: skip
    _, err = process.communicate(timeout=60)

    assert process.returncode == 2
    assert f"edgehub: module keys file {keys} is readable by others (mode 644): chmod 600 {keys}" in err
    assert "Traceback" not in err
