"""The edge with the simulator, all real processes: every sent reading is accounted for."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgefleet.bundle import read_manifest
from edgefleet.lake import read_deadletters, read_lake
from edgefleet_cli.edge_report import account
from edgefleet_cli.field_secrets import client_password_file
from edgefleet_cli.local_edge import FieldEndpoint, replay_module_env
from edgefleet_cli.up import run_up, simulate_on
from field_broker.identities import GATEWAY_USER
from simulator.profile import parse_profile
from tests.edge_fixtures import REPO


def _profile(seed: int = 3) -> object:
    return parse_profile(
        {
            "seed": seed,
            "duration_s": 6,
            "speed": 1.0,
            "device_types": [
                {"name": "pump", "count": 30, "id_prefix": "dev-", "rate_per_s": 10.0},
            ],
            "faults": {
                "nan_rate": 0.02,
                "missing_feature_rate": 0.02,
                "duplicate_rate": 0.02,
                "reorder_rate": 0.02,
                "burst_rate": 0.01,
                "spike_rate": 0.01,
                "stuck_rate": 0.01,
                "silent_device_rate": 0.1,
                "silent_duration_s": 2,
            },
        }
    )


def test_every_simulated_reading_is_predicted_dead_lettered_or_counted_as_a_duplicate(start_edge):
    profile = _profile()
    # The simulation runs on simulated time, dated in the past: let the sensor take its backlog.
    edge = start_edge(module_env=replay_module_env(profile.start_ts))
    progress: dict[str, object] = {}

    def simulation(endpoint: FieldEndpoint, stop: threading.Event) -> object:
        return simulate_on(endpoint, profile, stop, on_progress=progress.update)

    result = run_up(edge, threading.Event(), simulation=simulation, simulator_progress=progress, live=False)
    assert result.simulation.mqtt["tls"]  # the simulator logged in to the secure field broker
    expected = result.simulation.expected_at_edge
    assert expected["sent"] > 1000

    assert edge.lake_sink is not None
    edge.lake_sink.flush()
    edge.lake_sink.roll_now()
    lake = read_lake(edge.lake_dir)
    accounting = account(lake, read_deadletters(edge.lake_dir), expected)
    assert accounting["lost"] == 0
    assert accounting["predicted"] == expected["expected_valid"]
    assert accounting["deadletters_by_reason"].get("non_finite", 0) == expected["deadletter_non_finite"]
    sensor = result.last.sensor
    assert sensor["seq_duplicates"] == expected["duplicates"]
    fallbacks = result.last.inference["fallbacks"]
    assert fallbacks.get("missing_features", 0) >= expected["missing_features"]


# -- `edgefleet up` as a user runs it: exit codes, restarts, and nothing left running on any exit path --

MARKER = "EDGEFLEET_TEST_UP_RUN"


def _up_command(small_bundle, tmp_path, *extra):
    from edgefleet_cli.local_edge import free_port
    from tests.edge_fixtures import next_ip_base

    args = ["up", "--bundle", small_bundle, "--workdir", tmp_path / "edge", "--lake", tmp_path / "lake"]
    args += ["--ip-base", next_ip_base(), "--field-port", free_port(), *extra]
    return [sys.executable, "-m", "edgefleet_cli", *map(str, args)]


def _up_env(tmp_path):
    """Return the CLI's environment, marked so that every process it starts can be found afterwards."""
    from tests.edgefleet_cli.test_cli import clean_env

    return clean_env(**{MARKER: str(tmp_path)})


def _processes_of_run(tmp_path) -> list[str]:
    """Return the command lines of live processes that inherited this run's marker (brokers, modules, dashboard)."""
    marker = f"{MARKER}={tmp_path}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker not in environ.read_bytes().split(b"\0"):
                continue
            pid = environ.parent.name
            state = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z":
            found.append(f"{pid}: {cmdline}")
    return found


def _module_pid(tmp_path, module: str) -> int | None:
    for line in _processes_of_run(tmp_path):
        pid, cmdline = line.split(": ", 1)
        if f"-m modules.{module}" in cmdline:
            return int(pid)
    return None


def _run_up(command, tmp_path, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=_up_env(tmp_path), timeout=timeout_s, check=False
    )


@pytest.mark.parametrize("seconds", ["0", "-5", "inf", "soon"])
def test_up_refuses_a_lake_roll_age_that_is_not_a_positive_number_of_seconds(small_bundle, tmp_path, seconds):
    run = _run_up(_up_command(small_bundle, tmp_path, "--lake-roll-every-s", seconds), tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--lake-roll-every-s" in run.stderr and "seconds" in run.stderr
    assert "Traceback" not in run.stderr and _processes_of_run(tmp_path) == []


def test_up_with_a_refused_bundle_exits_2_naming_the_module_and_its_log_and_leaves_no_process(small_bundle, tmp_path):
    from edgefleet_cli.local_edge import free_port

    tampered = tmp_path / "bundle"
    shutil.copytree(small_bundle, tampered)
    manifest = read_manifest(tampered)
    victim = tampered / next(e.onnx.path for e in manifest.devices.values() if e.kind == "device")
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")

    command = _up_command(tampered, tmp_path, "--dashboard-port", free_port())
    run = _run_up(command, tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "module inference exited at start (exit code 2)" in run.stderr
    assert str(tmp_path / "edge" / "logs" / "inference.log") in run.stderr
    assert "Traceback" not in run.stderr
    assert _processes_of_run(tmp_path) == []


def test_up_whose_field_port_is_taken_exits_2_naming_the_field_broker_and_leaves_no_process(small_bundle, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        command = _up_command(small_bundle, tmp_path, "--no-dashboard", "--field-port", port)
        run = _run_up(command, tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "field broker failed to start" in run.stderr and "field-broker.log" in run.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert _processes_of_run(tmp_path) == []


def test_up_stopped_by_sigterm_while_it_starts_leaves_no_process(small_bundle, tmp_path):
    from tests.edge_fixtures import wait_for

    command = _up_command(small_bundle, tmp_path, "--no-dashboard")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_up_env(tmp_path)
    )
    try:
        # The brokers and the stand-in run, the modules are starting: the middle of the start.
        wait_for(lambda: (tmp_path / "edge" / "logs" / "sensor.log").exists(), timeout_s=60)
        process.send_signal(signal.SIGTERM)
        output, errors = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output + errors
    assert "edge running" not in output
    assert _processes_of_run(tmp_path) == []


@pytest.mark.parametrize(
    ("policy", "exit_code", "summary"), [("always", 0, "running, 1 restart(s)"), ("never", 1, "down")]
)
def test_up_restarts_a_killed_module_as_its_restart_policy_says_and_fails_when_it_stayed_down(
    small_bundle, tmp_path, policy, exit_code, summary
):
    from edgefleet.deployment import DEFAULT_TEMPLATE
    from tests.edge_fixtures import wait_for

    manifest = json.loads((REPO / DEFAULT_TEMPLATE).read_text())
    manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["inference"]["restartPolicy"] = policy
    deployment = tmp_path / "deployment.json"
    deployment.write_text(json.dumps(manifest))
    command = _up_command(small_bundle, tmp_path, "--no-dashboard", "--duration-s", 10, "--deployment", deployment)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_up_env(tmp_path)
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("edge running"), banner
        os.kill(wait_for(lambda: _module_pid(tmp_path, "inference"), timeout_s=10), signal.SIGKILL)
        output, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == exit_code, output + errors
    assert f"inference: {summary}" in output and "last exit signal SIGKILL" in output
    if exit_code:
        assert "module inference was down at the end" in errors and "inference.log" in errors
    assert _processes_of_run(tmp_path) == []


def test_up_whose_status_loop_fails_stops_every_process_before_the_error_surfaces(small_bundle, tmp_path, monkeypatch):
    import edgefleet_cli.up
    from edgefleet_cli.cli import main

    running: list[str] = []

    def broken_status_loop(*args, **kwargs):
        running.extend(_processes_of_run(tmp_path))
        raise RuntimeError("status loop broke")

    monkeypatch.setenv(MARKER, str(tmp_path))  # inherited by every process the edge starts
    monkeypatch.setattr(edgefleet_cli.up, "run_up", broken_status_loop)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(RuntimeError, match="status loop broke"):
            main([str(arg) for arg in _up_command(small_bundle, tmp_path, "--no-dashboard")[3:]])
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert sum("mosquitto" in line or "-m modules." in line for line in running) == 5  # 3 brokers, 2 modules
    assert [line for line in _processes_of_run(tmp_path) if not line.startswith(f"{os.getpid()}:")] == []


def test_the_status_table_shows_each_modules_state_restarts_and_last_exit():
    from rich.console import Console

    from edgefleet_cli.supervisor import ModuleStatus, Phase
    from edgefleet_cli.up import Snapshot, module_summary, status_table

    modules = {
        "sensor": ModuleStatus("sensor", Phase.RUNNING, 0, None),
        "inference": ModuleStatus("inference", Phase.RESTARTING, 2, -signal.SIGKILL, restart_in_s=3.2),
    }
    now = Snapshot(2.0, sensor={"readings": 10, "field_connected": True}, modules=modules)
    console = Console(width=200, record=True)
    console.print(status_table(now, Snapshot(1.0)))
    text = console.export_text()
    sensor_row = next(line for line in text.splitlines() if "sensor" in line)
    inference_row = next(line for line in text.splitlines() if "inference" in line)
    assert "running" in sensor_row and "connected" in sensor_row
    assert "restarting in 3 s" in inference_row and " 2 " in inference_row and "signal SIGKILL" in inference_row
    assert module_summary(modules) == [
        "sensor: running, 0 restart(s), last exit -",
        "inference: restarting in 3 s, 2 restart(s), last exit signal SIGKILL",
    ]


def _gateway(tmp_path, port: int) -> FieldEndpoint:
    """Return how the simulator's identity reaches the field broker of `edgefleet up --workdir <tmp>/edge`."""
    secrets = tmp_path / "edge" / "field-secrets"
    password_file = client_password_file(secrets, GATEWAY_USER)
    return FieldEndpoint("127.0.0.1", port, secrets / "ca.pem", GATEWAY_USER, password_file)


def _read_pid(path: Path) -> int:
    """Return the pid a pid file names (0 while it is missing or being written)."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _alive(pid: int) -> bool:
    """Return whether a process runs (a zombie has an empty command line)."""
    if pid <= 0:
        return False
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def _field_broker_pid(tmp_path) -> int | None:
    for line in _processes_of_run(tmp_path):
        pid, cmdline = line.split(": ", 1)
        if "-m field_broker" in cmdline:
            return int(pid)
    return None


def test_up_restarts_its_field_broker_killed_with_sigkill_and_the_sensor_takes_readings_again(small_bundle, tmp_path):
    from tests.edge_fixtures import field_client, reading, wait_for

    command = _up_command(small_bundle, tmp_path, "--no-dashboard", "--duration-s", 20)
    field_port = int(command[command.index("--field-port") + 1])
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_up_env(tmp_path)
    )
    device = "dev-field-restart"
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("edge running") and f"field broker mqtts://127.0.0.1:{field_port}" in banner, banner
        mosquitto_pid_file = tmp_path / "edge" / "field" / "mosquitto.pid"
        old_mosquitto = int(mosquitto_pid_file.read_text())
        os.kill(_field_broker_pid(tmp_path), signal.SIGKILL)
        # Its Mosquitto exits with it, and the restarted field broker starts a new one.
        wait_for(lambda: not _alive(old_mosquitto), timeout_s=10)
        wait_for(lambda: _alive(_read_pid(mosquitto_pid_file)), timeout_s=15)
        # Mosquitto writes its pid file before it opens its listener.
        wait_for(lambda: _listening(field_port), timeout_s=15)
        # A field gateway publishes again; the sensor's session died with the broker, so some may go unheard.
        device_client = field_client(_gateway(tmp_path, field_port), "test-field-device")
        device_client.connect("127.0.0.1", field_port)
        device_client.loop_start()
        for seq in range(40):
            device_client.publish(f"fleet/{device}/telemetry", json.dumps(reading(device, seq)), qos=1)
            time.sleep(0.2)
        device_client.disconnect()
        device_client.loop_stop()
        output, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output + errors
    assert "broker field: restarted 1 time(s) after it died" in output
    lake = read_lake(tmp_path / "lake")
    assert device in set(lake["device_id"]), errors
    assert _processes_of_run(tmp_path) == []


def test_up_tells_where_the_field_brokers_ca_is_and_how_to_add_a_device_and_refuses_anonymous_devices(
    small_bundle, tmp_path
):
    import paho.mqtt.client as mqtt

    from edgefleet.mqtt_login import tls_context

    command = _up_command(small_bundle, tmp_path, "--no-dashboard")
    field_port = int(command[command.index("--field-port") + 1])
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_up_env(tmp_path)
    )
    secrets = tmp_path / "edge" / "field-secrets"
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(4)]
        assert f"field broker mqtts://127.0.0.1:{field_port}" in banner[0], banner
        assert f"CA certificate: {secrets / 'ca.pem'}" in banner[1], banner
        assert f"edgefleet field add-device ID --dir {secrets}" in banner[2], banner
        assert f"--username {GATEWAY_USER}" in banner[3], banner
        anonymous = mqtt.Client(client_id="anonymous-device", clean_session=True)
        anonymous.tls_set_context(tls_context(secrets / "ca.pem"))
        answered: list[int] = []
        anonymous.on_connect = lambda client, userdata, flags, rc: answered.append(rc)
        anonymous.connect("127.0.0.1", field_port)
        anonymous.loop_start()
        from tests.edge_fixtures import wait_for

        assert wait_for(lambda: answered, timeout_s=10)[0] == mqtt.CONNACK_REFUSED_NOT_AUTHORIZED
        anonymous.disconnect()
        anonymous.loop_stop()
    finally:
        process.send_signal(signal.SIGTERM)
        output, errors = process.communicate(timeout=120)
    assert process.returncode == 0, output + errors
    assert "WARNING" not in errors
    assert _processes_of_run(tmp_path) == []


def test_up_with_insecure_field_warns_and_takes_anonymous_plain_readings(small_bundle, tmp_path):
    import paho.mqtt.client as mqtt

    from tests.edge_fixtures import reading

    command = _up_command(small_bundle, tmp_path, "--no-dashboard", "--duration-s", 6, "--insecure-field")
    field_port = int(command[command.index("--field-port") + 1])
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_up_env(tmp_path)
    )
    device = "dev-insecure"
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"field broker mqtt://127.0.0.1:{field_port}" in banner, banner
        client = mqtt.Client(client_id="anonymous-device", clean_session=True)
        client.connect("127.0.0.1", field_port)
        client.loop_start()
        client.publish(f"fleet/{device}/telemetry", json.dumps(reading(device, 1)), qos=1).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        output, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output + errors
    assert "WARNING: --insecure-field" in errors and "anonymous, unencrypted" in errors
    assert not (tmp_path / "edge" / "field-secrets").exists()
    assert device in set(read_lake(tmp_path / "lake")["device_id"])
    assert _processes_of_run(tmp_path) == []


def test_demo_stopped_by_sigterm_while_its_edge_runs_leaves_no_process(tmp_path):
    from tests.edge_fixtures import wait_for

    command = [sys.executable, "-m", "edgefleet_cli", "demo", "--workdir", str(tmp_path / "demo")]
    command += ["--devices", "10", "--rows", "200", "--edge-seconds", "120", "--no-dashboard"]
    demo = subprocess.Popen(
        command, cwd=REPO, env=_up_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(
            lambda: _module_pid(tmp_path, "inference") is not None or demo.poll() is not None,
            timeout_s=150,
            interval_s=0.5,
        )
        assert demo.poll() is None, "the demo ended before its edge ran"
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 128 + signal.SIGTERM
    finally:
        if demo.poll() is None:
            demo.kill()
    wait_for(lambda: _processes_of_run(tmp_path) == [], timeout_s=10)
