"""`python -m simulator` on the authenticated TLS field broker: it logs in as the gateway, or says why it cannot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from edgefleet.endpoints import TELEMETRY
from edgefleet.field import FIELD_TOPIC_FILTER
from edgehub.certs import ensure_certs
from tests.edge_fixtures import wait_for
from tests.field_auth import (
    GATEWAY_PASSWORD,
    GATEWAY_USER,
    FieldAuthBroker,
    secret_file,
)
from tests.modules.sensor.test_field_login import _forwarded, _sensor

REPO = Path(__file__).resolve().parents[2]
DEVICES, READINGS_EACH = 20, 20


def _profile(tmp_path: Path) -> Path:
    """Write a small profile: 20 devices x 20 readings, dated now (the sensor refuses stale dates), no faults."""
    path = tmp_path / "profile.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "seed": 3,
                "start_ts": "now",
                "duration_s": 2.0,
                "speed": 0,
                "device_types": [{"name": "unit", "count": DEVICES, "rate_per_s": 10.0}],
                "mqtt": {"connect_timeout_s": 10},
            }
        )
    )
    return path


def _simulate(
    tmp_path: Path,
    broker: FieldAuthBroker,
    password: str = GATEWAY_PASSWORD,
    ca_file: Path | None = None,
    host: str = "127.0.0.1",
) -> subprocess.CompletedProcess[str]:
    password_file = secret_file(tmp_path / "gateway-password", password)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator",
            "--profile",
            str(_profile(tmp_path)),
            "--host",
            host,
            "--port",
            str(broker.port),
            "--ca-file",
            str(ca_file or broker.certs.ca_cert),
            "--username",
            GATEWAY_USER,
            "--password-file",
            str(password_file),
            "--report",
            str(tmp_path / "report.json"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_simulator_publishes_over_tls_as_the_gateway_and_the_sensor_gets_every_reading(
    tmp_path: Path, field_auth_broker: FieldAuthBroker
) -> None:
    service, client = _sensor(tmp_path, field_auth_broker)
    try:
        wait_for(lambda: service.stats()["subscribed"] == FIELD_TOPIC_FILTER, timeout_s=10)
        result = _simulate(tmp_path, field_auth_broker)
        assert result.returncode == 0, result.stderr
        assert f"to mqtts://127.0.0.1:{field_auth_broker.port}" in result.stdout
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["mqtt"]["tls"] and report["delivery"]["acknowledged"] == DEVICES * READINGS_EACH
        client.wait_until(TELEMETRY, lambda sent: len(_forwarded(client)) >= DEVICES * READINGS_EACH)
        expected = {(f"dev-{d:05d}", seq) for d in range(DEVICES) for seq in range(READINGS_EACH)}
        assert sorted(_forwarded(client)) == sorted(expected)
    finally:
        service.stop()


def test_the_simulator_with_a_wrong_password_exits_2_saying_to_check_the_password_file(
    tmp_path: Path, field_auth_broker: FieldAuthBroker
) -> None:
    started = time.monotonic()
    result = _simulate(tmp_path, field_auth_broker, password="not-the-password")
    assert result.returncode == 2
    assert "refused the connection: Connection Refused: not authorised" in result.stderr
    assert "--username, --password-file" in result.stderr
    assert "Traceback" not in result.stderr and "not-the-password" not in result.stderr
    assert time.monotonic() - started < 15


def test_the_simulator_with_a_ca_that_did_not_sign_the_broker_exits_2_saying_to_pass_the_right_ca(
    tmp_path: Path, field_auth_broker: FieldAuthBroker
) -> None:
    stranger = ensure_certs(tmp_path / "another-ca", ["127.0.0.1"]).ca_cert
    started = time.monotonic()
    result = _simulate(tmp_path, field_auth_broker, ca_file=stranger)
    assert result.returncode == 2
    assert "the broker's certificate does not verify (unable to get local issuer certificate)" in result.stderr
    assert "set --ca-file (mqtt.tls_ca_file) to the CA that signed it" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 15  # at once, not after the connect timeout


def test_the_simulator_connecting_by_a_name_the_brokers_certificate_does_not_list_exits_2_saying_so(
    tmp_path: Path, field_auth_broker: FieldAuthBroker
) -> None:
    result = _simulate(tmp_path, field_auth_broker, host="localhost")  # the certificate names field-broker
    assert result.returncode == 2
    assert "the broker's certificate does not name this host (Hostname mismatch" in result.stderr
    assert "set --host to a name or address its certificate lists" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_simulator_with_a_world_readable_password_file_exits_2_saying_to_chmod_600(tmp_path: Path) -> None:
    password_file = secret_file(tmp_path / "gateway-password", GATEWAY_PASSWORD, mode=0o644)
    command = [sys.executable, "-m", "simulator", "--profile", str(_profile(tmp_path))]
    command += ["--username", GATEWAY_USER, "--password-file", str(password_file)]
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"chmod 600 {password_file}" in result.stderr and "mqtt.password_file" in result.stderr
    assert "Traceback" not in result.stderr
