"""A variable that looks like a setting but is none stops the start, naming the setting it was meant to be."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from edgefleet.environment import EnvCheck, unknown_variables
from edgefleet.errors import StartError
from edgefleet.process import load_settings
from edgehub.settings import EdgeHubSettings
from edgehub.sink_settings import SinkSettings
from modules.inference.settings import InferenceSettings
from modules.sensor.settings import SensorSettings

# What a container, a device and a developer's shell set besides our settings.
UNRELATED = {
    name: "x"
    for name in (
        "PATH", "HOME", "HOSTNAME", "LANG", "TERM", "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHON_VERSION", "GPG_KEY",
        "IOTEDGE_MODULEID", "IOTEDGE_DEVICEID", "IOTEDGE_IOTHUBHOSTNAME", "IOTEDGE_GATEWAYHOSTNAME",
        "IOTEDGE_WORKLOADURI", "IOTEDGE_APIVERSION", "IOTEDGE_AUTHSCHEME", "IOTEDGE_MODULEGENERATIONID",
        "EdgeHubConnectionString", "EdgeModuleCACertificateFile", "RuntimeLogLevel", "STATE_DIRECTORY",
        "XDG_RUNTIME_DIR", "VIRTUAL_ENV", "SSL_CERT_FILE", "FIELD_MQTT_BIND", "DASHBOARD_PORT", "SIM_DURATION_S",
        "EDGEFLEET_TAG", "EDGEFLEET_SUBNET", "LAKE_FLUSH_EVERY_S",
    )
}  # fmt: skip
SETTINGS: list[type[BaseSettings]] = [SensorSettings, InferenceSettings, EdgeHubSettings, SinkSettings]

pytestmark = pytest.mark.fast


def _check(cls: type[BaseSettings], environ: dict[str, str]) -> list[str]:
    check = cls.env_check  # type: ignore[attr-defined]
    assert isinstance(check, EnvCheck)
    return unknown_variables(cls, check, environ)


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda cls: cls.__name__)
def test_variables_of_the_runtime_the_sdk_python_and_the_container_are_left_alone(cls: type[BaseSettings]) -> None:
    assert _check(cls, UNRELATED) == []


@pytest.mark.parametrize(
    ("cls", "variable", "meant"),
    [
        (SensorSettings, "FIELD_MQTT_HOTS", "FIELD_MQTT_HOST"),
        (SensorSettings, "MAX_READING_AGE", "MAX_READING_AGE_S"),
        (SensorSettings, "SENSOR_MAX_READING_AGE", "MAX_READING_AGE_S"),
        (SensorSettings, "SENSOR_MAX_READING_AGE_S", "MAX_READING_AGE_S"),
        (SensorSettings, "LOGLEVEL", "LOG_LEVEL"),
        (InferenceSettings, "BUNDLE_DIRS", "BUNDLE_DIR"),
        (InferenceSettings, "INFERENCE_MODEL_CACHE_MB", "MODEL_CACHE_MB"),
        (EdgeHubSettings, "EDGEHUB_DEPLOYMNT", "EDGEHUB_DEPLOYMENT"),
        (EdgeHubSettings, "EDGEHUB_UNHEALTHY_EXIT", "EDGEHUB_UNHEALTHY_EXIT_S"),
        (SinkSettings, "SINK_FLUSH_EVERY", "SINK_FLUSH_EVERY_S"),
    ],
)
def test_a_near_miss_or_a_variable_with_the_process_prefix_names_the_setting_it_was_meant_to_be(
    cls: type[BaseSettings], variable: str, meant: str
) -> None:
    assert _check(cls, {**UNRELATED, variable: "1"}) == [
        f"{variable} is not a setting of this process; did you mean {meant}?"
    ]


def test_a_prefixed_variable_like_no_setting_at_all_lists_what_the_process_reads() -> None:
    (problem,) = _check(SinkSettings, {"SINK_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ": "1"})
    assert "SINK_ZZZ" in problem and "it reads" in problem and "SINK_LAKE_DIR" in problem


def test_a_retired_variable_says_what_replaced_it() -> None:
    assert _check(InferenceSettings, {**UNRELATED, "PREDICTIONS_MAX_BYTES": "65536"}) == [
        "PREDICTIONS_MAX_BYTES is no longer read; set the twin's desired property upstreamMaxBytes instead "
        "(4096-262144, default 131072)"
    ]


def test_settings_loaded_with_a_misspelled_variable_fail_at_start_with_every_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FIELD_MQTT_HOTS", "mqtt")
    with pytest.raises(StartError) as raised:
        load_settings(SensorSettings)
    message = str(raised.value)
    assert "FIELD_MQTT_HOTS is not a setting of this process; did you mean FIELD_MQTT_HOST?" in message
    assert "FIELD_MQTT_HOST: Field required" in message  # the validation problems are listed too


def _float_settings(cls: type[BaseSettings]) -> list[str]:
    return [name for name, field in cls.model_fields.items() if field.annotation in (float, float | None)]


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "inf", "nan"])
def test_no_float_setting_takes_an_infinite_or_undefined_value(cls: type[BaseSettings], value: object) -> None:
    names = _float_settings(cls)
    assert names  # every process has intervals
    for name in names:
        with pytest.raises(ValidationError, match="finite number"):
            cls.model_validate({name: value})
