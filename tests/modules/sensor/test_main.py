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
