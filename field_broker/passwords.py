"""Mosquitto 2.0 password files, written by us: `user:$7$<iterations>$<salt>$<hash>` (PBKDF2-SHA512).

Hosts and images that provision devices need not have `mosquitto_passwd`; the format is the one
Mosquitto 2.0 reads (`$7$`, base64 salt and derived key).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from edgefleet.errors import EdgefleetError
from edgefleet.filemodes import write_atomic
from edgefleet.mosquitto_passwords import hash_password, verify_password

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
    write_atomic(Path(path), text.encode("utf-8"))
