"""Real processes: a module that stays deaf exits with code 3, which restart policies act on."""

from __future__ import annotations

import time

from edgefleet_cli.local_edge import ModuleProcess, free_port
from modules.runtime import UNHEALTHY_EXIT_CODE
from tests.edge_fixtures import wait_for


def test_a_sensor_whose_field_broker_never_answers_exits_with_code_3_and_logs_why(start_edge, tmp_path):
    edge = start_edge(unhealthy_after_s=60.0)  # the supervisor must not stop it first
    edge.processes["sensor"].stop()  # stopped on purpose: the supervisor leaves it down
    dead_port = free_port()  # nothing listens here
    env = {
        **edge.module_environment("sensor"),
        "FIELD_MQTT_PORT": str(dead_port),
        "UNHEALTHY_EXIT_S": "3",
        "REPORT_INTERVAL_S": "0.5",
    }
    deaf = ModuleProcess("sensor", env, tmp_path / "deaf-logs").start()
    try:
        started_s = time.monotonic()
        wait_for(lambda: not deaf.running(), timeout_s=15)
        assert time.monotonic() - started_s < 10.0
        assert deaf.exit_code() == UNHEALTHY_EXIT_CODE
        log = deaf.log_path.read_text()
        assert "ERROR modules.sensor.service: sensor has been unhealthy for" in log
        # The edge's sensor logs in with TLS (FIELD_MQTT_CA_FILE): the address says mqtts.
        assert f"the field broker mqtts://{env['FIELD_MQTT_HOST']}:{dead_port} is not connected" in log
    finally:
        deaf.stop()
