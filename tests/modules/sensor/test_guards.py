"""The sensor's guards: a window of plausible dates around the edge's clock, and the topic's device id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.messages import BAD_TIMESTAMP, DEVICE_MISMATCH, MessageError
from modules.sensor.guards import DeviceTopic, TimestampWindow

pytestmark = pytest.mark.fast

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
WINDOW = TimestampWindow(max_age=timedelta(days=7), max_skew=timedelta(minutes=5))


@pytest.mark.parametrize(
    "ts",
    [NOW, NOW - timedelta(days=7), NOW + timedelta(minutes=5), NOW - timedelta(days=6, hours=23)],
    ids=["now", "exactly-7-days-old", "exactly-5-min-ahead", "buffered-for-almost-a-week"],
)
def test_readings_dated_inside_the_window_including_its_edges_pass(ts):
    WINDOW.check(ts, NOW)


@pytest.mark.parametrize(
    "ts",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2261, 12, 31, tzinfo=UTC),
        NOW - timedelta(days=7, microseconds=1),
        NOW + timedelta(minutes=5, microseconds=1),
    ],
    ids=["1970", "2261", "just-over-7-days-old", "just-over-5-min-ahead"],
)
def test_readings_dated_outside_the_window_are_refused_with_the_window_in_the_detail(ts):
    with pytest.raises(MessageError) as caught:
        WINDOW.check(ts, NOW)
    assert caught.value.reason == BAD_TIMESTAMP
    assert "2026-11-29T12:00:00Z .. 2026-12-06T12:05:00Z" in caught.value.detail
    assert "7 d old, 5 min ahead" in caught.value.detail


@pytest.mark.parametrize(
    ("topic_filter", "topic", "device_id"),
    [
        ("fleet/+/telemetry", "fleet/dev-7/telemetry", "dev-7"),
        ("+/telemetry", "dev-7/telemetry", "dev-7"),
        ("site/north/+", "site/north/dev-7", "dev-7"),
        ("fleet/+/#", "fleet/dev-7/telemetry/extra", "dev-7"),
        ("fleet/telemetry", "fleet/telemetry", None),  # a shared topic names no device
        ("fleet/#", "fleet/dev-7/telemetry", None),
        ("+/+/telemetry", "a/b/telemetry", None),  # two wildcards: which one is the device?
        (None, "fleet/dev-7/telemetry", None),
    ],
)
def test_the_device_id_is_read_from_the_one_plus_level_of_any_filter(topic_filter, topic, device_id):
    assert DeviceTopic(topic_filter).device_id(topic) == device_id


def test_a_reading_whose_device_id_disagrees_with_its_topic_is_refused_naming_both():
    guard = DeviceTopic("fleet/+/telemetry")
    guard.check("fleet/dev-7/telemetry", "dev-7")
    with pytest.raises(MessageError) as caught:
        guard.check("fleet/dev-7/telemetry", "dev-8")
    assert caught.value.reason == DEVICE_MISMATCH
    assert "'dev-8'" in caught.value.detail and "'dev-7'" in caught.value.detail


def test_on_a_shared_topic_any_device_id_is_taken():
    DeviceTopic("fleet/telemetry").check("fleet/telemetry", "dev-8")


def test_the_window_defaults_to_a_week_back_and_five_minutes_ahead_and_the_environment_can_change_it():
    from edgefleet.process import load_settings
    from modules.sensor.settings import SensorSettings

    connection = "HostName=h;GatewayHostName=127.0.0.1;DeviceId=edge7;ModuleId=sensor;SharedAccessKey=a"
    default = load_settings(SensorSettings, field_mqtt_host="localhost", edgehub_connection_string=connection)
    assert (default.max_reading_age_s, default.max_clock_skew_s, default.seq_jump_limit) == (604_800, 300, 10_000)
    wider = load_settings(
        SensorSettings,
        field_mqtt_host="localhost",
        edgehub_connection_string=connection,
        MAX_READING_AGE_S="3600",
        MAX_CLOCK_SKEW_S="0",
    )
    assert (wider.max_reading_age_s, wider.max_clock_skew_s) == (3600, 0)
