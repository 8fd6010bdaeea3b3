"""Sensor settings and twin desired properties."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.desired import SensorDesired
from edgefleet.environment import unknown_variables
from edgefleet.errors import StartError
from edgefleet.field import FIELD_TOPIC_FILTER
from edgefleet.process import load_settings
from edgehub.certs import ensure_certs
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


# -- the field broker's TLS and credentials -------------------------------------------------------


def _secret(tmp_path: Path, text: str = "s3cret\n", mode: int = 0o600) -> Path:
    path = tmp_path / "field-password"
    path.write_text(text)
    path.chmod(mode)
    return path


def _ca(tmp_path: Path) -> Path:
    return ensure_certs(tmp_path / "tls", ["127.0.0.1"]).ca_cert


def _refused(**settings: object) -> str:
    with pytest.raises(StartError) as failure:
        load_settings(SensorSettings, field_mqtt_host="h", **settings)
    return str(failure.value)


def test_a_password_file_is_read_once_into_a_secret_that_no_dump_or_repr_shows(tmp_path):
    path = _secret(tmp_path)
    settings = load_settings(
        SensorSettings, field_mqtt_host="h", field_mqtt_username="sensor", field_mqtt_password_file=str(path)
    )
    path.write_text("changed\n")  # read at start: a later change needs a restart
    assert settings.field_mqtt_password_file is not None
    assert settings.field_mqtt_password_file.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


def test_a_world_readable_password_file_fails_at_start_saying_to_chmod_600(tmp_path):
    path = _secret(tmp_path, mode=0o644)
    text = _refused(field_mqtt_username="sensor", field_mqtt_password_file=str(path))
    assert f"FIELD_MQTT_PASSWORD_FILE: {path} is open to every user on the host" in text
    assert f"chmod 600 {path}" in text


@pytest.mark.parametrize(
    ("content", "problem"),
    [("", "is empty: write the password into it"), ("a\nb\n", "holds more than one line")],
)
def test_a_password_file_without_exactly_one_password_fails_at_start_naming_the_problem(tmp_path, content, problem):
    path = _secret(tmp_path, text=content)
    assert problem in _refused(field_mqtt_username="sensor", field_mqtt_password_file=str(path))


def test_a_missing_password_file_fails_at_start_saying_to_mount_it(tmp_path):
    text = _refused(field_mqtt_username="sensor", field_mqtt_password_file=str(tmp_path / "nowhere"))
    assert "FIELD_MQTT_PASSWORD_FILE" in text and "does not exist: mount the secret file there" in text


def test_a_password_file_that_is_a_folder_fails_at_start(tmp_path):
    text = _refused(field_mqtt_username="sensor", field_mqtt_password_file=str(tmp_path))
    assert "is not a file: point at the file that holds the password" in text


def test_a_password_without_a_username_fails_at_start_saying_to_set_the_username(tmp_path):
    text = _refused(field_mqtt_password_file=str(_secret(tmp_path)))
    assert "FIELD_MQTT_PASSWORD_FILE is set but FIELD_MQTT_USERNAME is not" in text


def test_a_username_without_a_password_file_fails_at_start_saying_to_mount_one():
    text = _refused(field_mqtt_username="sensor")
    assert "FIELD_MQTT_USERNAME is set but FIELD_MQTT_PASSWORD_FILE is not" in text and "chmod 600" in text


def test_a_password_in_the_environment_is_refused_pointing_at_the_password_file():
    problems = unknown_variables(
        SensorSettings,
        SensorSettings.env_check,
        {"FIELD_MQTT_HOST": "h", "FIELD_MQTT_PASSWORD": "s3cret", "FIELD_MQTT_USER": "sensor"},
    )
    assert problems == [
        "FIELD_MQTT_PASSWORD is not a setting of this process; did you mean FIELD_MQTT_PASSWORD_FILE?",
        "FIELD_MQTT_USER is not a setting of this process; did you mean FIELD_MQTT_USERNAME?",
    ]


def test_a_ca_file_turns_tls_on_and_the_port_defaults_to_8883(tmp_path):
    ca = _ca(tmp_path)
    settings = load_settings(SensorSettings, field_mqtt_host="h", field_mqtt_ca_file=str(ca))
    assert settings.field_tls and settings.field_mqtt_port == 8883
    explicit = load_settings(SensorSettings, field_mqtt_host="h", field_mqtt_ca_file=str(ca), field_mqtt_port=18883)
    assert explicit.field_mqtt_port == 18883
    assert load_settings(SensorSettings, field_mqtt_host="h").field_mqtt_port == 1883


def test_a_missing_ca_file_fails_at_start_saying_to_mount_the_ca(tmp_path):
    text = _refused(field_mqtt_ca_file=str(tmp_path / "ca.pem"))
    assert "FIELD_MQTT_CA_FILE" in text and "does not exist: mount the CA certificate (PEM)" in text


def test_a_ca_file_that_is_no_certificate_fails_at_start_saying_what_to_use(tmp_path):
    key = tmp_path / "tls" / "certs" / "ca.key"
    _ca(tmp_path)  # a private key is a plausible wrong pick
    text = _refused(field_mqtt_ca_file=str(key))
    assert f"FIELD_MQTT_CA_FILE: {key} is not a PEM CA certificate" in text
    assert "-----BEGIN CERTIFICATE-----" in text
