"""Who may use the hub broker (the local IoT Hub's Mosquitto) and what each may do.

The hub broker refuses anonymous clients. Its users file is a Mosquitto password file
(`user:$7$...` lines, as `mosquitto_passwd` writes them; 0600): the sink never sees a client's
password, only its hash. A user's name is its role:

- `edgefleet-edgehub` (the stand-in) may only publish upstream messages (`devices/+/modules/+/messages/#`);
- every other user (`edgefleet-dashboard`, ...) may only subscribe to and read them;
- `edgefleet-lake-sink`, the sink's own subscriber, is no user of the file: the sink gives it a new
  random password at every start, which only the sink and its Mosquitto child know.

Nothing else is allowed: Mosquitto denies what no ACL line grants (a denied publish is acknowledged
and dropped). The link carries no TLS: it stays on loopback or an internal compose network.

`ensure_hub_credentials` provisions a folder (`edgefleet up`, `edgefleet compose secrets`):

    <folder>/passwords                       the users file, for the sink (0600)
    <folder>/clients/edgefleet-edgehub.password    the stand-in's password (0600)
    <folder>/clients/edgefleet-dashboard.password  the dashboard's password (0600)
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from edgefleet.errors import EdgefleetError
from edgefleet.filemodes import write_atomic
from edgefleet.hub_wire import HUB_DASHBOARD_USER, HUB_PUBLISHER_USER, HUB_SUBSCRIPTION
from edgefleet.secret_files import read_secret_text
from edgehub.broker import BrokerAuth, mosquitto_password_hash

__all__ = [
    "SINK_USER",
    "USERS_FILE",
    "HubCredentials",
    "HubUsers",
    "HubUsersError",
    "client_password_file",
    "ensure_hub_credentials",
    "render_hub_acl",
    "write_hub_broker_auth",
]

SINK_USER: Final = "edgefleet-lake-sink"
USERS_FILE: Final = "passwords"
CLIENTS: Final = "clients"
# Mosquitto 2.0 reads $6$ (SHA-512) and $7$ (PBKDF2-SHA512) hashes; a name is no topic level here,
# but ':' separates it from the hash and '#', '+', '/' or spaces in an ACL line would change its meaning.
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HASH = re.compile(r"\$[67]\$\S+")


class HubUsersError(EdgefleetError):
    """Raise when a hub users file or credentials folder cannot be used."""


class HubUsers:
    """The hub broker's users file, read once at start: username -> Mosquitto password hash."""

    __slots__ = ("hashes", "path")

    def __init__(self, path: Path, hashes: Mapping[str, str]) -> None:
        self.path = path
        self.hashes = MappingProxyType(dict(hashes))

    @classmethod
    def read(cls, path: Path | str) -> HubUsers:
        """Read and check a users file; raise ValueError saying how to fix it."""
        path = Path(path).expanduser().resolve()
        text = read_secret_text(path, "the hub's users (user:$7$... lines)")
        hashes: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            user, _, hashed = line.partition(":")
            if not _USER.fullmatch(user) or not _HASH.fullmatch(hashed):
                raise ValueError(
                    f"{path}:{number} is not `username:$7$...`: write the file with `edgefleet compose secrets` "
                    "or `mosquitto_passwd`"
                )
            if user == SINK_USER:
                raise ValueError(f"{path}:{number}: {SINK_USER!r} is the sink's own identity; remove that line")
            hashes[user] = hashed
        if HUB_PUBLISHER_USER not in hashes:
            raise ValueError(
                f"{path} has no {HUB_PUBLISHER_USER!r}: the stand-in could not publish upstream messages; "
                "add it (edgefleet compose secrets writes it)"
            )
        return cls(path, hashes)

    def __repr__(self) -> str:
        return f"HubUsers({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HubUsers) and (self.path, dict(self.hashes)) == (other.path, dict(other.hashes))

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # A path in, the file read at validation (start); dumped as its path.
        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(lambda value: str(value.path))
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "path"}

    @classmethod
    def _validate(cls, value: object) -> HubUsers:
        if isinstance(value, HubUsers):
            return value
        if isinstance(value, str | os.PathLike):
            return cls.read(Path(value))
        raise ValueError("expected the path of the hub's users file")


def render_hub_acl(usernames: Iterable[str]) -> str:
    """Return a Mosquitto ACL: the stand-in publishes upstream messages, every other user reads them."""
    lines = ["# Generated from the hub's users file; rewritten on every start. Mosquitto denies what no line grants."]
    for user in sorted(set(usernames)):
        access = "write" if user == HUB_PUBLISHER_USER else "read"
        lines += ["", f"user {user}", f"topic {access} {HUB_SUBSCRIPTION}"]
    return "\n".join(lines) + "\n"


def write_hub_broker_auth(folder: Path, hashes: Mapping[str, str], name: str = "hub") -> BrokerAuth:
    """Write the hub broker's password and ACL files (0600) into `folder` and return them."""
    password_file, acl_file = Path(folder) / f"mosquitto-{name}.passwd", Path(folder) / f"mosquitto-{name}.acl"
    write_atomic(password_file, "".join(f"{user}:{hashed}\n" for user, hashed in sorted(hashes.items())).encode())
    write_atomic(acl_file, render_hub_acl(hashes).encode())
    return BrokerAuth(password_file, acl_file)


def client_password_file(folder: Path, user: str) -> Path:
    """Return the file holding a hub client's password in a credentials folder."""
    return Path(folder) / CLIENTS / f"{user}.password"


@dataclass(frozen=True, slots=True)
class HubCredentials:
    """A provisioned credentials folder: the sink's users file and each client's password file."""

    folder: Path
    users_file: Path
    password_files: Mapping[str, Path]


def ensure_hub_credentials(
    folder: Path, users: Iterable[str] = (HUB_PUBLISHER_USER, HUB_DASHBOARD_USER)
) -> HubCredentials:
    """Create (or keep) the users file and a random password per client; files 0600, folders 0700."""
    folder = Path(folder).resolve()
    clients = folder / CLIENTS
    try:
        for directory in (folder, clients):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)
        users_file = folder / USERS_FILE
        hashes = dict(HubUsers.read(users_file).hashes) if users_file.exists() else {}
        files = {}
        for user in users:
            secret_file = files[user] = client_password_file(folder, user)
            if user in hashes and secret_file.is_file():
                continue
            password = secrets.token_urlsafe(32)
            write_atomic(secret_file, f"{password}\n".encode())
            hashes[user] = mosquitto_password_hash(password)
        text = "".join(f"{user}:{hashed}\n" for user, hashed in sorted(hashes.items()))
        # Rewritten only when a user was added: a file handed to the sink's uid keeps its owner.
        if not users_file.exists() or users_file.read_text(encoding="utf-8") != text:
            write_atomic(users_file, text.encode())
    except (OSError, ValueError) as err:
        raise HubUsersError(f"cannot provision the hub credentials in {folder}: {err}") from None
    return HubCredentials(folder, users_file, MappingProxyType(files))
