"""Private files written atomically: mode 0600, and the owner of the file they replace."""

from __future__ import annotations

import os
import stat

import pytest

from edgefleet.filemodes import write_atomic

pytestmark = pytest.mark.fast


def test_an_atomic_write_leaves_an_owner_only_file_whatever_was_there(tmp_path):
    secret = tmp_path / "key"
    secret.write_bytes(b"old")
    secret.chmod(0o644)
    write_atomic(secret, b"new")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary file left


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can write a file another uid owns (CI runs as root)")
def test_root_rewriting_a_container_users_secret_keeps_that_user_as_its_owner(tmp_path):
    secret = tmp_path / "passwords"
    write_atomic(secret, b"a:1\n")
    os.chown(secret, 10007, 10007)
    write_atomic(secret, b"a:1\nb:2\n")
    assert (secret.stat().st_uid, secret.stat().st_gid) == (10007, 10007)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_bytes() == b"a:1\nb:2\n"
