"""The stand-in and sink processes bring a killed broker back, and exit 3 when they stay unhealthy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pandas as pd

from edgefleet.hub_wire import HUB_DASHBOARD_USER, HUB_SUBSCRIPTION
from edgefleet.routes import Message
from edgefleet_cli.local_edge import free_port
from tests.edge_fixtures import module_identity_in, module_mqtt_client
from tests.hub_logins import HubLogins

from .conftest import next_ip_base, wait_for

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deployment" / "deployment.template.json"
JSON = {"contentType": "application/json", "contentEncoding": "utf-8"}
PREDICTIONS = "devices/edge1/modules/inference/messages/events/%24.on=predictions"


def _run(module: str, *args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    return err


def _kill_9(pid_file: Path) -> int:
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


def _new_pid(pid_file: Path, old_pid: int) -> bool:
    try:
        return int(pid_file.read_text()) != old_pid
    except (OSError, ValueError):
        return False


class _HubWatcher:
    """A subscriber on the hub broker (the dashboard's login): what the stand-in sends `$upstream`."""

    def __init__(self, port: int, logins: HubLogins) -> None:
        self.bodies: list[bytes] = []
        self.client = mqtt.Client(client_id="test-hub-watcher", clean_session=True)
        self.client.username_pw_set(HUB_DASHBOARD_USER, logins.password(HUB_DASHBOARD_USER))
        self.client.on_connect = lambda client, *_: client.subscribe(HUB_SUBSCRIPTION, qos=1)
        self.client.on_message = lambda _c, _u, msg: self.bodies.append(msg.payload)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _routed_from_inference(state: Path, host: str, watcher: _HubWatcher, body: bytes, timeout_s: float) -> bool:
    """Publish as the inference module (its key, the stand-in's CA) until the hub broker sees `body`."""
    identity = module_identity_in(state, "inference")
    module = module_mqtt_client(identity, state / "certs" / "ca.pem", clean_session=False)
    module.reconnect_delay_set(0.05, 0.5)
    module.connect_async(host, 8883)
    module.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if module.is_connected():
                module.publish(PREDICTIONS, body, qos=1)
            if body in watcher.bodies:
                return True
            time.sleep(0.3)
        return False
    finally:
        module.disconnect()
        module.loop_stop()


def test_the_stand_in_restarts_a_module_broker_killed_with_sigkill_and_routes_again(
    tmp_path: Path, hub_logins: HubLogins
) -> None:
    hub_port = free_port()
    hub = hub_logins.broker(tmp_path / "hub", hub_port).start()
    watcher = _HubWatcher(hub_port, hub_logins)
    ip_base, state = next_ip_base(), tmp_path / "state"
    health = tmp_path / "healthy"
    process = _run(
        "edgehub", "--deployment", TEMPLATE, "--state-dir", state, "--ip-base", ip_base,
        "--upstream-mqtt", f"127.0.0.1:{hub_port}", *hub_logins.standin_flags(), "--health-file", health,
    )  # fmt: skip
    try:
        wait_for(lambda: health.exists() or process.poll() is not None, timeout_s=60)
        assert process.poll() is None, _stop(process)
        host = f"{ip_base}.11"
        assert _routed_from_inference(state, host, watcher, b'{"before": 1}', timeout_s=20)

        pid_file = state / "brokers" / "mosquitto-inference.pid"
        old_pid = _kill_9(pid_file)
        wait_for(lambda: _new_pid(pid_file, old_pid), timeout_s=5)
        assert _routed_from_inference(state, host, watcher, b'{"after": 1}', timeout_s=10)
    finally:
        err = _stop(process)
        watcher.close()
        hub.stop()
    assert process.returncode == 0, err
    assert "mosquitto 'inference' exited with signal SIGKILL; restarting it now" in err
    assert "Restarted mosquitto 'inference' (restart 1)" in err


def _telemetry(seq: int) -> Message:
    body = {"schema": "edgefleet.telemetry/1", "device_id": "dev-1", "seq": seq, "ts": "2026-11-20T10:00:00Z"}
    return Message("edge1", "sensor", "telemetry", {}, JSON, json.dumps({**body, "features": {"temp": 1.0}}).encode())


def _lake_seqs(lake: Path) -> set[int]:
    try:
        return set(pd.concat([pd.read_parquet(path) for path in lake.glob("date=*/*.parquet")])["seq"].astype(int))
    except (OSError, ValueError, KeyError):  # nothing written yet, or a file being renamed into place
        return set()


def test_the_sink_restarts_its_hub_broker_killed_with_sigkill_and_writes_the_lake_again(
    tmp_path: Path, hub_logins: HubLogins
) -> None:
    port, lake, health = free_port(), tmp_path / "lake", tmp_path / "healthy"
    process = _run(
        "edgehub.sink_service", "--listen", f"127.0.0.1:{port}", "--lake", lake, "--state-dir", tmp_path / "state",
        "--flush-every-s", 0.3, "--roll-every-s", 0.3, "--health-file", health, *hub_logins.sink_flags(),
    )  # fmt: skip
    publisher = hub_logins.publisher(port, "test-sink-publisher")
    try:
        wait_for(lambda: health.exists() or process.poll() is not None, timeout_s=60)
        assert process.poll() is None, _stop(process)
        publisher(_telemetry(0))
        wait_for(lambda: 0 in _lake_seqs(lake), timeout_s=20, interval_s=0.2)

        pid_file = tmp_path / "state" / "broker" / "mosquitto-hub.pid"
        old_pid = _kill_9(pid_file)
        wait_for(lambda: _new_pid(pid_file, old_pid), timeout_s=5)
        # The killed broker had not saved the sink's subscription: publish until it has subscribed again.
        seqs = iter(range(1, 1000))

        def written_again() -> bool:
            publisher(_telemetry(next(seqs)))
            return bool(_lake_seqs(lake) - {0})

        wait_for(written_again, timeout_s=10, interval_s=0.3)
    finally:
        publisher.close(timeout_s=5)
        err = _stop(process)
    assert process.returncode == 0, err
    assert "mosquitto 'hub' exited with signal SIGKILL; restarting it now" in err


def test_a_stand_in_whose_upstream_stays_unreachable_exits_3_for_its_restart_policy(
    tmp_path: Path, hub_logins: HubLogins
) -> None:
    nobody = free_port()  # nothing listens: the sink is down
    process = _run(
        "edgehub", "--deployment", TEMPLATE, "--state-dir", tmp_path / "state", "--ip-base", next_ip_base(),
        "--upstream-mqtt", f"127.0.0.1:{nobody}", *hub_logins.standin_flags(), "--unhealthy-exit-s", 2,
    )  # fmt: skip
    _, err = process.communicate(timeout=90)
    assert process.returncode == 3, err
    assert "EDGEHUB_UNHEALTHY_EXIT_S=2" in err and "the upstream does not take messages" in err
    assert "Traceback" not in err


def test_a_sink_whose_hub_broker_cannot_come_back_exits_3_for_its_restart_policy(
    tmp_path: Path, hub_logins: HubLogins
) -> None:
    port, state = free_port(), tmp_path / "state"
    process = _run(
        "edgehub.sink_service", "--listen", f"127.0.0.1:{port}", "--lake", tmp_path / "lake", "--state-dir", state,
        "--unhealthy-exit-s", 2, "--health-file", tmp_path / "healthy", *hub_logins.sink_flags(),
    )  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "healthy").exists() or process.poll() is not None, timeout_s=60)
        # Mosquitto refuses to start on a corrupt persistence file: every restart fails.
        (state / "broker" / "mosquitto-hub.db").write_bytes(b"not a mosquitto database")
        _kill_9(state / "broker" / "mosquitto-hub.pid")
        _, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 3, err
    assert "could not be restarted" in err and "SINK_UNHEALTHY_EXIT_S=2" in err
    assert "Traceback" not in err
