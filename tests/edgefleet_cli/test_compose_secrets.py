"""`edgefleet compose secrets`: the field broker's secrets and module keys, kept across runs, private."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from edgefleet.hub_wire import HUB_DASHBOARD_USER, HUB_PUBLISHER_USER
from edgefleet.mqtt_login import PasswordFile
from edgefleet_cli.cli import main
from edgefleet_cli.compose_secrets import DASHBOARD_UID, EDGEHUB_UID, SINK_UID, key_variable
from edgehub.auth import read_keys_file
from edgehub.hub_auth import HubUsers

pytestmark = pytest.mark.fast


def _env(path):
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def _hub(secrets):
    return {path.relative_to(secrets): path.read_text() for path in (secrets / "hub").rglob("*") if path.is_file()}


def test_the_modules_keys_in_compose_env_are_the_keys_the_stand_in_reads(tmp_path, capsys):
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=DEBUG\n")
    assert main(["compose", "secrets", "--dir", str(tmp_path / "secrets"), "--env-file", str(env_file)]) == 0

    keys = read_keys_file(tmp_path / "secrets" / "module-keys", ("sensor", "inference"))
    env = _env(env_file)
    assert env["LOG_LEVEL"] == "DEBUG"  # the user's own lines stay
    for module in ("sensor", "inference"):
        assert base64.b64decode(env[key_variable(module)]) == keys[module]
    assert "fieldbroker" not in " ".join(env)  # it talks to no edgeHub: no key
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert (tmp_path / "secrets" / "field" / "passwords").is_file()
    assert "--image-owners" in capsys.readouterr().out  # says what a non-root run left to do


def test_running_it_again_keeps_every_key_and_password(tmp_path):
    args = ["compose", "secrets", "--dir", str(tmp_path / "s"), "--env-file", str(tmp_path / ".env")]
    assert main(args) == 0

    def kept() -> tuple[object, ...]:
        return _env(tmp_path / ".env"), (tmp_path / "s" / "field" / "passwords").read_text(), _hub(tmp_path / "s")

    first = kept()
    assert main(args) == 0
    assert kept() == first


def test_the_stand_ins_uid_is_the_edgehub_images():
    from scripts.images.catalog import image

    assert image("edgehub").uid == EDGEHUB_UID
    assert image("sink").uid == SINK_UID
    assert image("dashboard").uid == DASHBOARD_UID


def test_the_hub_logins_it_writes_are_the_ones_the_sink_takes_and_stay_private(tmp_path):
    assert main(["compose", "secrets", "--dir", str(tmp_path / "s"), "--env-file", str(tmp_path / ".env")]) == 0
    hub = tmp_path / "s" / "hub"

    users = HubUsers.read(hub / "passwords")  # what `python -m edgehub.sink_service --users-file` reads
    assert set(users.hashes) == {HUB_PUBLISHER_USER, HUB_DASHBOARD_USER}
    for user in (HUB_PUBLISHER_USER, HUB_DASHBOARD_USER):
        password = PasswordFile.read(hub / "clients" / f"{user}.password").password.get_secret_value()
        assert len(password) >= 40 and password not in (hub / "passwords").read_text()  # hashes only
    assert {stat.S_IMODE(p.stat().st_mode) for p in hub.rglob("*") if p.is_file()} == {0o600}
    assert stat.S_IMODE(hub.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to other uids needs root (CI runs as root)")
def test_with_image_owners_the_stand_in_owns_the_keys_and_nobody_else_reads_them(tmp_path):
    args = ["compose", "secrets", "--dir", str(tmp_path / "s"), "--env-file", str(tmp_path / ".env"), "--image-owners"]
    assert main(args) == 0
    keys = (tmp_path / "s" / "module-keys").stat()
    assert keys.st_uid == EDGEHUB_UID and stat.S_IMODE(keys.st_mode) == 0o600
    hub = tmp_path / "s" / "hub"
    owners = {
        "passwords": SINK_UID,
        f"clients/{HUB_PUBLISHER_USER}.password": EDGEHUB_UID,
        f"clients/{HUB_DASHBOARD_USER}.password": DASHBOARD_UID,
    }
    for name, uid in owners.items():
        info = (hub / name).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (uid, 0o600), name
