"""`edgefleet compose secrets`: the field broker's secrets and module keys, kept across runs, private."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from edgefleet_cli.cli import main
from edgefleet_cli.compose_secrets import EDGEHUB_UID, key_variable
from edgehub.auth import read_keys_file

pytestmark = pytest.mark.fast


def _env(path):
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


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
    first = (_env(tmp_path / ".env"), (tmp_path / "s" / "field" / "passwords").read_text())
    assert main(args) == 0
    assert (_env(tmp_path / ".env"), (tmp_path / "s" / "field" / "passwords").read_text()) == first


def test_the_stand_ins_uid_is_the_edgehub_images():
    from scripts.images.catalog import image

    assert image("edgehub").uid == EDGEHUB_UID


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to other uids needs root (CI runs as root)")
def test_with_image_owners_the_stand_in_owns_the_keys_and_nobody_else_reads_them(tmp_path):
    args = ["compose", "secrets", "--dir", str(tmp_path / "s"), "--env-file", str(tmp_path / ".env"), "--image-owners"]
    assert main(args) == 0
    keys = (tmp_path / "s" / "module-keys").stat()
    assert keys.st_uid == EDGEHUB_UID and stat.S_IMODE(keys.st_mode) == 0o600
