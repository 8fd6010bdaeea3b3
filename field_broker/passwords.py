"""Mosquitto 2.0 password files, written by us: `user:$7$<iterations>$<salt>$<hash>` (PBKDF2-SHA512).

Hosts and images that provision devices need not have `mosquitto_passwd`; the format is the one
Mosquitto 2.0 reads (`$7$`, base64 salt and derived key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from edgefleet.errors import EdgefleetError

__all__ = [
    "PasswordFileError",
    "check_username",
    "hash_password",
    "new_password",
    "read_password_file",
    "verify_password",
    "write_password_file",
    "write_secret",
]

# Mosquitto's own default. The passwords we issue are 256 random bits, so stretching them adds no
# strength; a higher count only costs the broker CPU on every (re)connection.
ITERATIONS: Final = 101
SALT_BYTES: Final = 12
_KEY_BYTES: Final = 64
# A username is also a topic level (`fleet/<device id>/telemetry`): no wildcards, separators or
# spaces, and no ':' (the password file's separator).
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PasswordFileError(EdgefleetError):
    """Raise when a password file or a username is malformed."""


def check_username(name: str) -> str:
    """Return `name` if it can be a username and a topic level, else raise saying what is allowed."""
    if not _USERNAME.fullmatch(name):
        raise PasswordFileError(
            f"invalid id {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def new_password() -> str:
    """Return a fresh random password (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


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


def read_password_file(path: Path) -> dict[str, str]:
    """Return username → hash of a Mosquitto password file (empty if there is none)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not hashed:
            raise PasswordFileError(f"{path}:{number}: expected `username:hash`")
        users[user] = hashed
    return users


def write_password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write username → hash as a Mosquitto password file, 0600, atomically."""
    write_secret(path, "".join(f"{user}:{hashed}\n" for user, hashed in sorted(users.items())))


def write_secret(path: Path, text: str) -> None:
    """Write a file readable only by its owner, atomically (a reloading broker never reads half of it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)  # an older tmp file keeps its mode through O_CREAT
    _keep_owner(tmp, path)
    tmp.replace(path)


def _keep_owner(new: Path, old: Path) -> None:
    """Give `new` the owner of the file it replaces: root editing a broker's files must not lock it out."""
    try:
        before = old.stat()
    except FileNotFoundError:
        return
    if os.geteuid() == 0 and (before.st_uid, before.st_gid) != (os.getuid(), os.getgid()):
        os.chown(new, before.st_uid, before.st_gid)
