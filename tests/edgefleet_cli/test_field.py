"""`edgefleet field ...`: provisioning the field broker's config directory from the command line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgefleet_cli.cli import main
from edgefleet_cli.field_secrets import IMAGE_UIDS
from field_broker.identities import GATEWAY_USER, SENSOR_USER
from field_broker.passwords import read_password_file, verify_password


def _init(tmp_path: Path, *hosts: str) -> Path:
    field_dir = tmp_path / "field"
    args = ["field", "init", "--dir", str(field_dir)]
    for host in hosts:
        args += ["--host", host]
    assert main(args) == 0
    return field_dir


def test_init_makes_a_private_directory_with_the_certificate_and_the_edges_own_identities(tmp_path, capsys):
    from cryptography import x509

    field_dir = _init(tmp_path, "edge.example.com", "10.0.0.5")
    out = capsys.readouterr().out
    assert "edgefleet-sensor" in out and "edgefleet-gateway" in out
    assert stat.S_IMODE(field_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((field_dir / "passwords").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((field_dir / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "fieldbroker", "edge.example.com"} <= names
    assert ips == {"127.0.0.1", "10.0.0.5"}
    users = read_password_file(field_dir / "passwords")
    sensor_password = (field_dir / "clients" / "edgefleet-sensor.password").read_text().strip()
    assert verify_password(sensor_password, users["edgefleet-sensor"])


def test_add_device_prints_its_password_once_and_list_shows_it_as_a_device(tmp_path, capsys):
    field_dir = _init(tmp_path)
    capsys.readouterr()
    assert main(["field", "add-device", "pump-7", "--dir", str(field_dir)]) == 0
    captured = capsys.readouterr()
    password = captured.out.split("password (shown once; give it to the device): ")[1].strip()
    assert verify_password(password, read_password_file(field_dir / "passwords")["pump-7"])
    assert "HUP" in captured.err  # how a running broker takes it at once
    assert main(["field", "list", "--dir", str(field_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "edgefleet-gateway\tgateway",
        "edgefleet-sensor\tsensor",
        "pump-7\tdevice",
    ]


def test_add_device_takes_the_password_from_a_file_without_printing_it(tmp_path, capsys):
    field_dir = _init(tmp_path)
    secret = tmp_path / "pw"
    secret.write_text("correct horse battery staple\n")
    assert main(["field", "add-device", "pump-8", "--dir", str(field_dir), "--password-file", str(secret)]) == 0
    assert "correct horse" not in capsys.readouterr().out
    hashed = read_password_file(field_dir / "passwords")["pump-8"]
    assert verify_password("correct horse battery staple", hashed)


@pytest.mark.parametrize(
    ("device_id", "message"),
    [
        ("pump-7", "exists already"),
        ("fleet/+", "invalid id"),
        ("a b", "invalid id"),
        ("edgefleet-sensor", "reserved"),
    ],
)
def test_add_device_refuses_duplicates_invalid_and_reserved_ids_with_exit_2(tmp_path, capsys, device_id, message):
    field_dir = _init(tmp_path)
    assert main(["field", "add-device", "pump-7", "--dir", str(field_dir)]) == 0
    before = (field_dir / "passwords").read_text()
    capsys.readouterr()
    assert main(["field", "add-device", device_id, "--dir", str(field_dir)]) == 2
    assert message in capsys.readouterr().err
    assert (field_dir / "passwords").read_text() == before


def test_remove_device_refuses_an_unknown_device_and_the_edges_own_identities(tmp_path, capsys):
    field_dir = _init(tmp_path)
    assert main(["field", "remove-device", "nobody", "--dir", str(field_dir)]) == 2
    assert "no device 'nobody'" in capsys.readouterr().err
    assert main(["field", "remove-device", "edgefleet-gateway", "--dir", str(field_dir)]) == 2
    assert "not a device" in capsys.readouterr().err


def test_field_commands_on_a_directory_never_initialised_say_to_run_init(tmp_path, capsys):
    assert main(["field", "add-device", "pump-1", "--dir", str(tmp_path / "none")]) == 2
    assert f"edgefleet field init --dir {tmp_path / 'none'}" in capsys.readouterr().err


def test_the_image_owners_are_the_uids_the_images_run_as():
    from scripts.images.catalog import image

    assert {
        "field-broker": image("field-broker").uid,
        SENSOR_USER: image("sensor").uid,
        GATEWAY_USER: image("simulator").uid,
    } == IMAGE_UIDS


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to other uids needs root (CI runs as root)")
def test_init_with_image_owners_gives_each_container_user_only_what_it_reads_and_add_device_keeps_it(tmp_path):
    field = tmp_path / "field"
    assert main(["field", "init", "--dir", str(field), "--image-owners"]) == 0
    broker = IMAGE_UIDS["field-broker"]
    assert {p.stat().st_uid for p in (field, field / "passwords", field / "server-key.pem")} == {broker}
    assert (field / "clients" / f"{SENSOR_USER}.password").stat().st_uid == IMAGE_UIDS[SENSOR_USER]
    assert (field / "clients" / f"{GATEWAY_USER}.password").stat().st_uid == IMAGE_UIDS[GATEWAY_USER]

    assert main(["field", "add-device", "dev-7", "--dir", str(field)]) == 0  # root rewrites the password file
    assert (field / "passwords").stat().st_uid == broker
    assert stat.S_IMODE((field / "passwords").stat().st_mode) == 0o600
