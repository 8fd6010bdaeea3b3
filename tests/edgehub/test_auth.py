"""SAS tokens and module keys as the stand-in checks them: pure functions, the SDK's own token builder as reference."""

from __future__ import annotations

import base64
import stat
import time
from pathlib import Path

import pytest
from azure.iot.device.common.auth.sastoken import RenewableSasToken
from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism

from edgehub.auth import (
    KeysError,
    ModuleIdentity,
    check_connect,
    ensure_module_keys,
    format_keys_file,
    generate_key,
    read_keys_file,
    sas_token,
    sas_username,
)
from edgehub.front import Connect, PacketError, encode_connect, parse_connect

pytestmark = pytest.mark.fast

HUB = "edgefleet-local.azure-devices.net"
SENSOR = ModuleIdentity(HUB, "edge1", "sensor", generate_key())
NOW = 1_900_000_000.0


def sdk_token(identity: ModuleIdentity, ttl_s: int = 3600, key: bytes | None = None) -> bytes:
    """Return the password the azure-iot-device SDK sends for a module."""
    uri = f"{identity.hub_hostname}/devices/{identity.device}/modules/{identity.module}"
    signer = SymmetricKeySigningMechanism(base64.b64encode(key or identity.key).decode())
    return str(RenewableSasToken(uri, signer, ttl=ttl_s)).encode()


def check(password: bytes | None, *, client_id: str = "edge1/sensor", username: str | None = None) -> str | None:
    return check_connect(
        SENSOR, client_id, username if username is not None else sas_username(HUB, "edge1", "sensor"), password, NOW
    )


def test_the_token_the_sdk_builds_for_the_module_is_accepted() -> None:
    username = f"{HUB}/edge1/sensor/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.12.0"

    assert check_connect(SENSOR, "edge1/sensor", username, sdk_token(SENSOR), time.time()) is None
    assert check(sas_token(SENSOR, int(NOW) + 60).encode()) is None


def test_a_client_without_credentials_is_refused_as_anonymous() -> None:
    assert check_connect(SENSOR, "edge1/sensor", None, None, NOW) == "no credentials (anonymous)"
    assert check_connect(SENSOR, "edge1/sensor", "x", None, NOW) == "no credentials (anonymous)"


def test_a_token_signed_with_another_key_is_refused() -> None:
    other = ModuleIdentity(HUB, "edge1", "sensor", generate_key())

    assert check(sas_token(other, int(NOW) + 60).encode()) == "wrong signature (key)"


def test_another_module_with_its_own_valid_token_is_refused_on_this_broker() -> None:
    inference = ModuleIdentity(HUB, "edge1", "inference", generate_key())
    token = sas_token(inference, int(NOW) + 60).encode()

    reason = check(token, client_id="edge1/inference", username=sas_username(HUB, "edge1", "inference"))
    assert reason == "username names edge1/inference, this broker serves edge1/sensor"
    # The right username and client id do not help a token made for another module.
    assert check(token) == f"token is for '{HUB}/devices/edge1/modules/inference'"


def test_a_token_for_another_device_is_refused() -> None:
    other_device = ModuleIdentity(HUB, "edge2", "sensor", SENSOR.key)

    assert check(sas_token(other_device, int(NOW) + 60).encode(), username=sas_username(HUB, "edge2", "sensor")) == (
        "username names edge2/sensor, this broker serves edge1/sensor"
    )
    token = sas_token(other_device, int(NOW) + 60).encode()
    assert check(token) == f"token is for '{HUB}/devices/edge2/modules/sensor'"


def test_an_expired_token_is_refused() -> None:
    assert check(sas_token(SENSOR, int(NOW) - 1).encode()) == "token expired"
    assert check(sas_token(SENSOR, int(NOW)).encode()) == "token expired"


def test_a_client_id_other_than_device_slash_module_is_refused_so_it_cannot_take_over_a_session() -> None:
    token = sas_token(SENSOR, int(NOW) + 60).encode()

    reason = check(token, client_id="edgefleet-edgehub-router")
    assert reason == "client id 'edgefleet-edgehub-router' is not 'edge1/sensor'"


@pytest.mark.parametrize(
    "password",
    [
        b"",
        b"Bearer abc",
        b"SharedAccessSignature sr=x",
        b"SharedAccessSignature sr=a&sig=b&se=c&skn=d",
        b"SharedAccessSignature sr=a&sr=a&sig=b",
        b"\xff\xfe",
    ],
    ids=["empty", "not-sas", "missing-fields", "policy-token", "duplicate-field", "not-utf8"],
)
def test_malformed_tokens_are_refused(password: bytes) -> None:
    assert check(password) == "malformed token"


def test_a_token_with_a_tampered_expiry_or_signature_is_refused() -> None:
    token = sas_token(SENSOR, int(NOW) + 60)
    later = token.replace(f"se={int(NOW) + 60}", f"se={int(NOW) + 999_999}")
    bad_base64 = token.split("&sig=")[0] + "&sig=!!!&se=" + token.split("&se=")[1]

    assert check(later.encode()) == "wrong signature (key)"
    assert check(bad_base64.encode()) == "malformed token"
    assert check(b"x", username="edge1") == "malformed username"


def test_a_connect_packet_round_trips_with_will_and_credentials() -> None:
    connect = Connect(
        "MQTT", 4, False, 60, "edge1/sensor", "will/topic", b"bye", 1, True, "user/name", b"SharedAccessSignature x"
    )
    packet = encode_connect(connect)

    assert packet[0] == 0x10
    assert parse_connect(packet[2:]) == connect  # a small packet: one byte of remaining length
    plain = Connect("MQTT", 4, True, 0, "x")
    assert parse_connect(encode_connect(plain)[2:]) == plain


def test_a_long_connect_encodes_its_remaining_length_in_several_bytes() -> None:
    connect = Connect("MQTT", 4, True, 30, "c", username="u", password=b"p" * 300)
    packet = encode_connect(connect)

    assert packet[1] & 0x80 and not packet[2] & 0x80
    assert parse_connect(packet[3:]) == connect


@pytest.mark.parametrize(
    "body",
    [b"\x00\x04MQTT\x04\x03\x00\x3c\x00\x01c", b"\x00\x04MQTT\x04\x40\x00\x3c\x00\x01c\x00\x01p", b"\x00\x04MQ"],
    ids=["reserved-flag", "password-without-username", "truncated"],
)
def test_malformed_connect_packets_are_rejected(body: bytes) -> None:
    with pytest.raises(PacketError):
        parse_connect(body)


def test_the_stand_in_makes_random_keys_once_and_keeps_them_private(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    first = ensure_module_keys(folder, ["sensor", "inference"])
    again = ensure_module_keys(folder, ["sensor", "inference", "extra"])

    assert len(first["sensor"]) == 32 and first["sensor"] != first["inference"]
    assert {module: again[module] for module in first} == first  # stable across restarts
    assert len(again["extra"]) == 32
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "module-keys").stat().st_mode) == 0o600


def test_an_operator_keys_file_gives_each_module_its_key(tmp_path: Path) -> None:
    keys = {"sensor": generate_key(), "inference": generate_key()}
    path = tmp_path / "keys"
    path.write_text("# provisioned by compose\n" + format_keys_file(keys))
    path.chmod(0o600)

    assert read_keys_file(path, ["sensor", "inference"]) == keys


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        (None, 0o600, "does not exist"),
        ("sensor=" + base64.b64encode(b"k" * 32).decode(), 0o644, "is readable by others (mode 644): chmod 600"),
        ("sensor " + base64.b64encode(b"k" * 32).decode(), 0o600, "line 1 is not MODULE=BASE64KEY"),
        ("sensor=not*base64", 0o600, "the key of sensor is not base64"),
        ("sensor=" + base64.b64encode(b"short").decode(), 0o600, "has 5 bytes, it needs 16 to 64"),
        ("inference=" + base64.b64encode(b"k" * 32).decode(), 0o600, "has no key for sensor"),
    ],
    ids=["missing", "world-readable", "no-equals", "not-base64", "too-short", "module-missing"],
)
def test_a_bad_operator_keys_file_is_refused_saying_how_to_fix_it(
    tmp_path: Path, content: str | None, mode: int, expected: str
) -> None:
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content + "\n")
        path.chmod(mode)

    with pytest.raises(KeysError) as caught:
        read_keys_file(path, ["sensor"])
    assert expected in str(caught.value)
