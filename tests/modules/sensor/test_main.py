"""`python -m modules.sensor`, the sensor image's command: a misspelled variable stops it at start, clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_the_sensor_with_a_misspelled_variable_exits_2_naming_it_and_the_setting_meant(tmp_path: Path) -> None:
    env = {**os.environ, "FIELD_MQTT_HOTS": "field-broker", "STATE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "modules.sensor"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "FIELD_MQTT_HOTS is not a setting of this process; did you mean FIELD_MQTT_HOST?" in result.stderr
    assert result.stderr.startswith("sensor: invalid SensorSettings:")
    assert "Traceback" not in result.stderr


def test_the_sensor_with_a_world_readable_password_file_exits_2_saying_to_chmod_600(tmp_path: Path) -> None:
    secret = tmp_path / "field-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    env = {
        **os.environ,
        "FIELD_MQTT_HOST": "field-broker",
        "FIELD_MQTT_USERNAME": "sensor",
        "FIELD_MQTT_PASSWORD_FILE": str(secret),
        "STATE_DIR": str(tmp_path / "state"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "modules.sensor"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"FIELD_MQTT_PASSWORD_FILE: {secret} is open to every user on the host" in result.stderr
    assert f"chmod 600 {secret}" in result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
