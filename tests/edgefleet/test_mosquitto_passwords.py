"""Mosquitto's `$7$` hashes: what our brokers' password files hold."""

from __future__ import annotations

import pytest

from edgefleet.mosquitto_passwords import ITERATIONS, hash_password, verify_password

pytestmark = pytest.mark.fast


def test_a_hash_verifies_its_password_only_and_carries_mosquittos_iteration_count():
    hashed = hash_password("s3cret")
    assert hashed.startswith(f"$7${ITERATIONS}$")
    assert verify_password("s3cret", hashed) and not verify_password("s3cret!", hashed)
    assert hash_password("s3cret") != hashed  # a new salt each time


@pytest.mark.parametrize("broken", ["", "$6$abc$def", "$7$x$AAAA$BBBB", "$7$101$not base64$AAAA"])
def test_a_malformed_hash_verifies_nothing(broken):
    assert not verify_password("anything", broken)
