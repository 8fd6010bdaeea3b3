"""Mosquitto 2.0's `$7$` password hashes (PBKDF2-SHA512), for the password files our brokers read.

One home for the format: the field broker's identities and the stand-in's and sink's internal
logins all write it, and Mosquitto checks it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Final

__all__ = ["ITERATIONS", "SALT_BYTES", "hash_password", "verify_password"]

# Mosquitto's own default. The passwords we issue are 256 random bits, so stretching them adds no
# strength; a higher count only costs the broker CPU on every (re)connection.
ITERATIONS: Final = 101
SALT_BYTES: Final = 12
_KEY_BYTES: Final = 64


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """Return Mosquitto 2.0's `$7$` hash of `password` (a new random salt unless one is given)."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, _KEY_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Return whether `password` matches a `$7$` hash."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt, key = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    found = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, len(key))
    return hmac.compare_digest(found, key)
