"""A real field broker (`python -m field_broker`, real Mosquitto) on free loopback ports, and MQTT clients for it."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgefleet_cli.field_secrets import add_device, client_password_file, init_field_dir
from edgefleet_cli.local_edge import free_port
from field_broker.identities import GATEWAY_USER, SENSOR_USER

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


@dataclass
class RunningBroker:
    """A field broker process and what clients need to reach it."""

    process: subprocess.Popen[str]
    config_dir: Path
    state_dir: Path
    port: int
    passwords: dict[str, str]
    plain_port: int | None = None

    @property
    def ca_file(self) -> Path:
        return self.config_dir / "ca.pem"

    def client(self, user: str | None, password: str | None = None, *, clean_session: bool = True) -> Client:
        """Return a TLS client of `user` (None: anonymous) with its password unless another is given."""
        secret = password if password is not None else self.passwords.get(user or "")
        return Client(self.port, user, secret, self.ca_file, clean_session=clean_session)


@dataclass
class Client:
    """A paho client that records what it receives and how its connection was answered."""

    port: int
    user: str | None
    password: str | None
    ca_file: Path | None
    received: list[tuple[str, bytes]] = field(default_factory=list)
    connack: int | None = None
    subacks: list[tuple[int, ...]] = field(default_factory=list)
    clean_session: bool = True

    def __post_init__(self) -> None:
        self._answered = threading.Event()
        self._subscribed = threading.Event()
        self.mqtt = mqtt.Client(client_id=f"test-{self.user}-{id(self)}", clean_session=self.clean_session)
        if self.ca_file is not None:
            self.mqtt.tls_set(ca_certs=str(self.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if self.user is not None:
            self.mqtt.username_pw_set(self.user, self.password)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_message = lambda client, userdata, msg: self.received.append((msg.topic, msg.payload))
        self.mqtt.on_subscribe = self._on_subscribe

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: int) -> None:
        self.connack = rc
        self._answered.set()
        if rc != 0:
            client.disconnect()  # refused: do not retry

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, granted: tuple[int, ...]) -> None:
        self.subacks.append(tuple(granted))
        self._subscribed.set()

    def connect(self, timeout_s: float = 10.0) -> int:
        """Connect and return the CONNACK code (0 accepted, 5 not authorised)."""
        self.mqtt.connect(HOST, self.port, keepalive=30)
        self.mqtt.loop_start()
        assert self._answered.wait(timeout_s), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def subscribe(self, topic: str) -> tuple[int, ...]:
        """Subscribe at QoS 1 and return the granted QoS list (128: refused)."""
        self._subscribed.clear()
        self.mqtt.subscribe(topic, qos=1)
        assert self._subscribed.wait(10), "no SUBACK"
        return self.subacks[-1]

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the PUBACK (Mosquitto acknowledges a denied publish too)."""
        self.mqtt.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def wait_until_listening(process: subprocess.Popen[str], port: int, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"field broker exited with {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"field broker not listening on {port}")


def start_field_broker(
    config_dir: Path, state_dir: Path, *extra: str, reload_check_s: float = 0.2, port: int | None = None
) -> tuple[subprocess.Popen[str], int]:
    port = port or free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FIELD_BROKER_RELOAD_CHECK_S": str(reload_check_s)}
    command = [
        sys.executable,
        "-m",
        "field_broker",
        "--config-dir",
        str(config_dir),
        "--state-dir",
        str(state_dir),
        "--bind",
        HOST,
        "--port",
        str(port),
        *extra,
    ]
    # A file, not a pipe: nobody reads the broker's log while it runs, and a full pipe would block it.
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir.parent / f"{state_dir.name}.log", "a") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=log, text=True)
    return process, port


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def field_dir(tmp_path: Path) -> Path:
    """A config directory made by `edgefleet field init`, with devices dev-a and dev-b."""
    made = init_field_dir(tmp_path / "field").path
    return made


@pytest.fixture
def field_broker(field_dir: Path, tmp_path: Path) -> Iterator[RunningBroker]:
    passwords = {
        SENSOR_USER: client_password_file(field_dir, SENSOR_USER).read_text().strip(),
        GATEWAY_USER: client_password_file(field_dir, GATEWAY_USER).read_text().strip(),
        "dev-a": add_device(field_dir, "dev-a"),
        "dev-b": add_device(field_dir, "dev-b"),
    }
    plain_port = free_port()
    process, port = start_field_broker(field_dir, tmp_path / "state", "--insecure-plain-port", str(plain_port))
    try:
        wait_until_listening(process, port)
        wait_until_listening(process, plain_port)  # Mosquitto opens it after the TLS one
        yield RunningBroker(process, field_dir, tmp_path / "state", port, passwords, plain_port)
    finally:
        stop(process)
