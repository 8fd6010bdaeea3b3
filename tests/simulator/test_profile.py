"""The simulator profile: what a valid one means, and errors that say how to fix an invalid one."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.certs import ensure_certs
from simulator.errors import ProfileError
from simulator.physics import device_ids
from simulator.profile import DEMO_PROFILE, assign_device_ids, load_profile, parse_profile, with_overrides
from tests.simulator.conftest import profile

pytestmark = pytest.mark.fast


def errors_of(data: object) -> str:
    with pytest.raises(ProfileError) as caught:
        parse_profile(data)
    return str(caught.value)


def test_demo_profile_simulates_the_fleet_generate_history_writes():
    demo = load_profile(DEMO_PROFILE)
    ids = [device_id for group in assign_device_ids(demo.device_types) for device_id in group]
    assert ids == device_ids(200)
    assert demo.seed == 7  # edgefleet demo's default --seed
    assert demo.mqtt.qos == 1 and demo.mqtt.topic_template == "fleet/{device_id}/telemetry"


def test_types_sharing_a_prefix_continue_one_numbering_and_others_start_at_zero():
    fleet = profile(
        device_types=[
            {"name": "a", "count": 2},
            {"name": "b", "count": 1, "id_prefix": "pump-"},
            {"name": "c", "count": 2},
        ]
    )
    assert assign_device_ids(fleet.device_types) == [
        ["dev-00000", "dev-00001"],
        ["pump-00000"],
        ["dev-00002", "dev-00003"],
    ]


def test_an_unknown_key_is_named_with_a_close_match_and_the_allowed_keys():
    message = errors_of({"device_types": [{"name": "a", "count": 1, "rate": 2.0}]})
    assert "device_types[0].rate: unknown key; did you mean 'rate_per_s'?" in message
    assert "allowed keys: name, count, id_prefix" in message


def test_an_out_of_range_value_shows_the_value_and_what_the_setting_means():
    message = errors_of({"device_types": [{"name": "a", "count": 1}], "faults": {"nan_rate": 1.5}})
    assert "faults.nan_rate: Input should be less than or equal to 1 (got 1.5)" in message
    assert "one feature is sent as NaN" in message


def test_a_missing_fleet_is_required_with_its_meaning():
    assert "device_types: required (the fleet, one entry per device type)" in errors_of({"seed": 1})


def test_every_problem_is_listed_at_once():
    message = errors_of({"device_types": [{"name": "a", "count": 0}], "mqtt": {"qos": 2, "port": 0}})
    assert "device_types[0].count" in message and "mqtt.qos" in message and "mqtt.port" in message


def test_unknown_features_and_wildcard_topics_say_what_is_allowed():
    message = errors_of({"device_types": [{"name": "a", "count": 1, "features": ["temperature_c", "rpm"]}]})
    assert "unknown feature(s) 'rpm'; choose from temperature_c, humidity_pct" in message
    message = errors_of({"device_types": [{"name": "a", "count": 1}], "mqtt": {"topic_template": "fleet/#"}})
    assert "must contain {device_id}" in message
    message = errors_of({"device_types": [{"name": "a", "count": 1}], "mqtt": {"topic_template": "f/+/{device_id}"}})
    assert "cannot contain the wildcards" in message


def test_a_start_time_without_a_zone_asks_for_utc():
    message = errors_of({"device_types": [{"name": "a", "count": 1}], "start_ts": "2026-11-01T00:00:00"})
    assert "start_ts" in message and "write UTC with a Z" in message


def test_types_whose_ids_collide_are_rejected():
    # "d" + 100000 and "d1" + 00000 are both "d100000".
    message = errors_of(
        {
            "device_types": [
                {"name": "a", "count": 100_001, "id_prefix": "d"},
                {"name": "b", "count": 1, "id_prefix": "d1"},
            ]
        }
    )
    assert "give them different id_prefix values" in message


def test_drift_needs_one_time_one_choice_of_devices_and_known_ids():
    base = {"device_types": [{"name": "a", "count": 3}], "duration_s": 10}
    assert "exactly one of at_s" in errors_of({**base, "drift": [{"device_fraction": 0.5}]})
    assert "exactly one of devices" in errors_of({**base, "drift": [{"at_s": 1}]})
    assert "unknown id(s) dev-00007; ids run dev-00000 .. dev-00002" in errors_of(
        {**base, "drift": [{"at_s": 1, "devices": ["dev-00007"]}]}
    )
    assert "is not before the end" in errors_of({**base, "drift": [{"at_s": 10, "device_fraction": 1}]})
    unbounded = {**base, "duration_s": None, "drift": [{"at_fraction": 0.5, "device_fraction": 1}]}
    assert "at_fraction needs duration_s" in errors_of(unbounded)


def test_a_password_needs_a_user_and_never_shows_in_repr_or_errors():
    assert "add mqtt.username" in errors_of(
        {"device_types": [{"name": "a", "count": 1}], "mqtt": {"password": "hunter2"}}
    )
    with_user = profile(mqtt={"username": "gateway", "password": "hunter2"})
    assert "hunter2" not in repr(with_user) and with_user.mqtt.password is not None
    assert with_user.mqtt.password.get_secret_value() == "hunter2"


def test_yaml_syntax_errors_name_the_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\ndevice_types: [\n  {name: a, count: 1}\n")
    with pytest.raises(ProfileError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_profile(path)


def test_a_missing_file_points_to_the_demo_profile(tmp_path: Path):
    with pytest.raises(ProfileError, match=r"not found: .*nope.yaml \(start from simulator/profiles/demo.yaml\)"):
        load_profile(tmp_path / "nope.yaml")


def test_json_profiles_load_too(tmp_path: Path):
    path = tmp_path / "fleet.json"
    path.write_text('{"seed": 2, "device_types": [{"name": "a", "count": 4}]}')
    assert load_profile(path).device_count == 4


def test_a_relative_ca_file_is_found_next_to_the_profile(tmp_path: Path):
    ensure_certs(tmp_path, ["127.0.0.1"])  # writes certs/ca.pem
    path = tmp_path / "tls.yaml"
    path.write_text("device_types: [{name: a, count: 1}]\nmqtt: {tls_ca_file: certs/ca.pem, port: 8883}\n")
    assert load_profile(path).mqtt.tls_ca_file == tmp_path / "certs" / "ca.pem"
    path.write_text("device_types: [{name: a, count: 1}]\nmqtt: {tls_ca_file: certs/missing.pem}\n")
    with pytest.raises(ProfileError, match=r"tls_ca_file: .*missing.pem does not exist: mount the CA certificate"):
        load_profile(path)
    path.write_text("device_types: [{name: a, count: 1}]\nmqtt: {tls_ca_file: certs/ca.key}\n")
    with pytest.raises(ProfileError, match=r"ca.key is not a PEM CA certificate"):
        load_profile(path)


def test_a_relative_password_file_is_read_next_to_the_profile_and_never_shown(tmp_path: Path):
    (tmp_path / "gateway-password").write_text("hunter2\n")
    (tmp_path / "gateway-password").chmod(0o600)
    path = tmp_path / "auth.yaml"
    path.write_text("device_types: [{name: a, count: 1}]\nmqtt: {username: gateway, password_file: gateway-password}\n")
    settings = load_profile(path).mqtt
    assert settings.password_file is not None and settings.password_file.path == tmp_path / "gateway-password"
    password = settings.broker_password()
    assert password is not None and password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_a_password_and_a_password_file_together_are_refused(tmp_path: Path):
    secret = tmp_path / "gateway-password"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    mqtt = {"username": "gateway", "password": "hunter2", "password_file": str(secret)}
    assert "set mqtt.password or mqtt.password_file (--password-file), not both" in errors_of(
        {"device_types": [{"name": "a", "count": 1}], "mqtt": mqtt}
    )


def test_overrides_are_validated_like_the_file():
    changed = with_overrides(profile(), rate_cap_per_s=50.0, mqtt={"port": 1884})
    assert changed.rate_cap_per_s == 50.0 and changed.mqtt.port == 1884
    with pytest.raises(ProfileError, match="speed"):
        with_overrides(profile(), speed=-1)


def test_feature_drift_needs_a_shift_of_known_features_by_finite_non_zero_amounts():
    base = {"device_types": [{"name": "a", "count": 3}], "duration_s": 10}

    def drift_errors(**event: object) -> str:
        return errors_of({**base, "drift": [{"at_s": 1, "device_fraction": 0.5, **event}]})

    assert "drift[0]: kind: features needs feature_shift, e.g. feature_shift: {temperature_c: 8.0}" in drift_errors(
        kind="features"
    )
    assert "drift[0].feature_shift: name at least one feature to shift" in drift_errors(
        kind="features", feature_shift={}
    )
    assert (
        "drift[0].feature_shift: unknown feature(s) 'rpm'; "
        "choose from temperature_c, humidity_pct, vibration_mm_s, load_pct"
    ) in drift_errors(kind="features", feature_shift={"rpm": 1.0, "load_pct": 2.0})
    non_finite = drift_errors(kind="features", feature_shift={"load_pct": 0, "temperature_c": float("nan")})
    assert "load_pct, temperature_c: a shift must be a finite number other than 0" in non_finite
    infinite = drift_errors(kind="features", feature_shift={"humidity_pct": float("inf")})
    assert "humidity_pct: a shift must be a finite number other than 0" in infinite
    assert "drift[0]: feature_shift needs kind: features" in drift_errors(feature_shift={"load_pct": 1.0})
    assert "drift[0].kind: Input should be 'relation' or 'features' (got 'covariate')" in drift_errors(kind="covariate")


def test_a_drift_event_is_concept_drift_unless_it_says_features():
    fleet = profile(
        duration_s=10.0,
        drift=[
            {"at_s": 1, "device_fraction": 0.5},
            {"at_s": 2, "device_fraction": 0.5, "kind": "features", "feature_shift": {"humidity_pct": -10}},
        ],
    )
    relation, features = fleet.drift
    assert (relation.kind, relation.feature_shift) == ("relation", None)
    assert (features.kind, features.feature_shift) == ("features", {"humidity_pct": -10.0})


def test_the_demo_profiles_feature_drift_example_is_valid(tmp_path: Path):
    lines = DEMO_PROFILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   - at_fraction"))
    example = [line.removeprefix("#   ") for line in lines[start:] if line.startswith("#   ")]
    path = tmp_path / "feature-drift.yaml"
    path.write_text("device_types: [{name: a, count: 40}]\ndrift:\n" + "\n".join(example) + "\n")
    (event,) = load_profile(path).drift
    assert event.kind == "features" and event.feature_shift == {"temperature_c": 8.0, "humidity_pct": -10.0}
