"""Sensor settings and twin desired properties."""

from __future__ import annotations

import pytest

from edgefleet.desired import SensorDesired
from edgefleet.errors import StartError
from edgefleet.field import FIELD_TOPIC_FILTER
from edgefleet.process import load_settings
from modules.runtime import apply_desired_patch
from modules.sensor.settings import SensorSettings

pytestmark = pytest.mark.fast


GOOD = SensorDesired(fieldTopic=FIELD_TOPIC_FILTER)


def test_desired_patch_changes_only_what_it_names_and_ignores_twin_metadata():
    desired = apply_desired_patch(GOOD, {"batchWindowMs": 50, "$version": 4})
    assert desired.batch_window_ms == 50
    assert desired.max_batch_bytes == GOOD.max_batch_bytes


@pytest.mark.parametrize(
    ("patch", "hint"),
    [
        ({"batchWindowMs": -1}, "batchWindowMs"),
        ({"maxBatchBytes": 10}, "maxBatchBytes"),
        ({"fieldTopic": "fleet/#/telemetry"}, "'#' must be"),
        ({"batchWindowMS": 5}, "batchWindowMS"),  # a typo is named, not ignored
        ({"enabled": "no"}, "enabled"),  # not coerced to false: the sensor would stop silently
        ({"batchWindowMs": "250"}, "batchWindowMs"),
        ({"fieldTopic": None}, "fieldTopic"),  # deleting the topic would leave the sensor deaf
    ],
)
def test_bad_desired_patch_is_rejected_with_the_property_named(patch, hint):
    with pytest.raises(ValueError, match="keeping the previous values") as rejected:
        apply_desired_patch(GOOD, patch)
    assert hint in str(rejected.value)


def test_edge_device_comes_from_the_dev_connection_string():
    settings = load_settings(
        SensorSettings,
        field_mqtt_host="localhost",
        edgehub_connection_string="HostName=h;GatewayHostName=127.0.0.1;DeviceId=edge7;ModuleId=sensor;SharedAccessKey=a",
    )
    assert settings.edge_device_id == "edge7"


def test_settings_errors_name_every_problem():
    with pytest.raises(StartError) as failure:
        load_settings(SensorSettings, field_mqtt_host="h", field_mqtt_port=0, log_level="LOUD")
    text = str(failure.value)
    assert "FIELD_MQTT_PORT" in text and "LOG_LEVEL" in text


@pytest.mark.parametrize("interval", ["inf", "nan", "-inf"])
def test_a_report_interval_that_is_not_a_finite_number_of_seconds_fails_at_start(interval):
    with pytest.raises(StartError, match="REPORT_INTERVAL_S"):
        load_settings(SensorSettings, field_mqtt_host="h", report_interval_s=interval)
