"""A real Mosquitto 2.0 as the authenticated field broker: TLS on loopback, passwords, an ACL.

Users: `sensor` reads every device's telemetry, `gateway` (the simulator, one connection for
many devices) publishes it. The password file is made with `mosquitto_passwd -b`; `set_password`
changes it and `reload` sends SIGHUP, which makes Mosquitto read the password and ACL files again.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.field import FIELD_TOPIC_FILTER
from edgefleet_cli.local_edge import free_port
from edgehub.broker import find_mosquitto
from edgehub.certs import CertPaths, ensure_certs
from tests.edge_fixtures import wait_for

__all__ = ["FieldAuthBroker", "field_auth_broker", "secret_file"]

SENSOR_USER = "sensor"
SENSOR_PASSWORD = "sensor-s3cret"
GATEWAY_USER = "gateway"
GATEWAY_PASSWORD = "gateway-s3cret"


def secret_file(path: Path, password: str, mode: int = 0o600) -> Path:
    """Write a password file as a mounted secret would be (0600 by default); return its path."""
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


class FieldAuthBroker:
    """One Mosquitto with a TLS listener on 127.0.0.1, no anonymous access, a password file and an ACL."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.port = free_port()
        # The server certificate names 127.0.0.1 and `field-broker` (compose's name): `localhost` fails
        # hostname checking though it reaches the same listener.
        self.certs: CertPaths = ensure_certs(folder / "tls", ["127.0.0.1"], hostnames=("field-broker",))
        self.passwords = folder / "passwd"
        self.acl = folder / "acl"
        self.log = folder / "mosquitto.log"
        self.config = folder / "mosquitto.conf"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> FieldAuthBroker:
        """Write the users, the ACL and the config, start Mosquitto and wait until it accepts TCP."""
        self.set_password(SENSOR_USER, SENSOR_PASSWORD)
        self.set_password(GATEWAY_USER, GATEWAY_PASSWORD)
        self.acl.write_text(
            f"user {SENSOR_USER}\ntopic read {FIELD_TOPIC_FILTER}\n\n"
            f"user {GATEWAY_USER}\ntopic write {FIELD_TOPIC_FILTER}\n"
        )
        user = f"user {getpass.getuser()}\n" if os.geteuid() == 0 else ""  # root would switch to `mosquitto`
        self.config.write_text(
            f"{user}per_listener_settings false\nallow_anonymous false\n"
            f"password_file {self.passwords}\nacl_file {self.acl}\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nconnection_messages true\n"
            f"listener {self.port} 127.0.0.1\ncertfile {self.certs.server_cert}\nkeyfile {self.certs.server_key}\n"
            "tls_version tlsv1.2\n"
        )
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                [find_mosquitto(), "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._accepts, timeout_s=10)
        return self

    def set_password(self, user: str, password: str) -> None:
        """Add or change a user in the broker's password file (takes effect at start or `reload`)."""
        create = [] if self.passwords.exists() else ["-c"]
        subprocess.run(["mosquitto_passwd", *create, "-b", str(self.passwords), user, password], check=True)

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its password and ACL files again."""
        assert self._process is not None
        self._process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Stop Mosquitto."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def _accepts(self) -> bool:
        assert self._process is not None and self._process.poll() is None, self.log.read_text()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True


@pytest.fixture
def field_auth_broker(tmp_path: Path) -> Iterator[FieldAuthBroker]:
    """Start the authenticated TLS field broker for one test."""
    broker = FieldAuthBroker(tmp_path / "field-broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
