"""The modules' desired-property schemas: strict JSON types, `null` back to the default, every problem named."""

from __future__ import annotations

import math

import pytest

from edgefleet.desired import DesiredError, InferenceDesired, SensorDesired, merge_desired, parse_desired
from edgefleet.field import FIELD_TOPIC_FILTER

pytestmark = pytest.mark.fast

SENSOR = {"batchWindowMs": 200, "maxBatchBytes": 3900, "fieldTopic": FIELD_TOPIC_FILTER, "enabled": True}
INFERENCE = {"expectedBundleVersion": "v1", "poorModelThreshold": 1.0, "logLevel": "INFO"}


def _rejected(schema, values) -> DesiredError:
    with pytest.raises(DesiredError) as rejected:
        parse_desired(schema, values)
    return rejected.value


@pytest.mark.parametrize(
    ("prop", "bad", "fix"),
    [
        ("enabled", "no", "true or false"),
        ("enabled", 0, "true or false"),
        ("batchWindowMs", "250", "integer of milliseconds"),
        ("batchWindowMs", 250.5, "integer of milliseconds"),
        ("batchWindowMs", 250.0, "integer of milliseconds"),
        ("batchWindowMs", -1, "0 to 60000"),
        ("maxBatchBytes", "3900", "integer of bytes"),
        ("maxBatchBytes", 10, "1024 to"),
        ("fieldTopic", 7, "topic filter"),
        ("fieldTopic", "fleet/#/telemetry", "'#' must be"),
        ("fieldTopic", "", "topic filter"),
    ],
)
def test_a_bad_sensor_value_is_rejected_naming_the_property_the_value_and_the_fix(prop, bad, fix):
    error = _rejected(SensorDesired, {**SENSOR, prop: bad})
    assert [problem.property for problem in error.problems] == [prop]
    assert fix in str(error)


@pytest.mark.parametrize(
    ("prop", "bad", "fix"),
    [
        ("poorModelThreshold", "1", "finite JSON number"),
        ("poorModelThreshold", -0.5, "finite JSON number"),
        ("poorModelThreshold", math.inf, "finite JSON number"),
        ("poorModelThreshold", math.nan, "finite JSON number"),
        ("logLevel", "LOUD", "one of"),
        ("logLevel", 10, "one of"),
        ("expectedBundleVersion", 20261121, "bundle version string"),
        ("expectedBundleVersion", "${BUNDLE_VERSION}", "unexpanded placeholder"),
        ("upstreamWindowMs", "1000", "integer of milliseconds, 0"),
        ("upstreamWindowMs", 250.5, "integer of milliseconds, 0"),
        ("upstreamWindowMs", -1, "integer of milliseconds, 0"),
        ("upstreamWindowMs", 60_001, "integer of milliseconds, 0"),
        ("upstreamMaxBytes", "131072", "integer of bytes, 4096 to 262144"),
        ("upstreamMaxBytes", 4095, "integer of bytes, 4096 to 262144"),
        ("upstreamMaxBytes", 256 * 1024 + 1, "integer of bytes, 4096 to 262144"),  # above IoT Hub's limit
    ],
)
def test_a_bad_inference_value_is_rejected_naming_the_property_the_value_and_the_fix(prop, bad, fix):
    error = _rejected(InferenceDesired, {**INFERENCE, prop: bad})
    assert [problem.property for problem in error.problems] == [prop]
    assert fix in str(error)


def test_every_bad_property_of_a_set_is_named_not_only_the_first():
    error = _rejected(SensorDesired, {**SENSOR, "enabled": "no", "batchWindowMs": "250", "batchWindowMS": 5})
    assert sorted(problem.property for problem in error.problems) == ["batchWindowMS", "batchWindowMs", "enabled"]
    assert "known: batchWindowMs" in str(error)  # a typo is named with the names that exist


def test_a_full_set_without_a_field_topic_is_rejected_instead_of_subscribing_to_nothing():
    error = _rejected(SensorDesired, {"enabled": True})
    assert [problem.property for problem in error.problems] == ["fieldTopic"]
    assert FIELD_TOPIC_FILTER in str(error)


def test_null_in_a_patch_deletes_the_property_so_it_is_back_to_its_default():
    current = {**SENSOR, "batchWindowMs": 50, "enabled": False}
    merged = merge_desired(current, {"batchWindowMs": None, "enabled": None, "$version": 7})
    desired = parse_desired(SensorDesired, merged)
    assert (desired.batch_window_ms, desired.enabled) == (200, True)
    assert desired.field_topic == FIELD_TOPIC_FILTER


def test_null_for_the_field_topic_is_rejected_because_it_has_no_default():
    error = _rejected(SensorDesired, merge_desired(SENSOR, {"fieldTopic": None}))
    assert [problem.property for problem in error.problems] == ["fieldTopic"]


def test_null_in_a_full_set_means_not_set():
    desired = parse_desired(InferenceDesired, {"poorModelThreshold": None, "logLevel": "debug"})
    assert (desired.poor_model_threshold, desired.log_level) == (1.0, "DEBUG")


def test_the_upstream_window_and_cap_default_to_one_second_and_128_kib_and_zero_means_every_round():
    assert (InferenceDesired().upstream_window_ms, InferenceDesired().upstream_max_bytes) == (1000, 128 * 1024)
    desired = parse_desired(InferenceDesired, {**INFERENCE, "upstreamWindowMs": 0, "upstreamMaxBytes": 262144})
    assert (desired.upstream_window_ms, desired.upstream_max_bytes) == (0, 262144)


def test_good_values_pass_as_json_gives_them():
    desired = parse_desired(InferenceDesired, {**INFERENCE, "poorModelThreshold": 2})  # a JSON integer is a number
    assert desired.poor_model_threshold == 2.0
    assert parse_desired(SensorDesired, SENSOR).max_reading_bytes() < 3900


def test_the_sensor_subscribes_to_nothing_before_its_twin_is_read():
    assert SensorDesired.before_twin().field_topic is None
