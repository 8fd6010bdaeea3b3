"""The field broker's config directory, provisioned on the host: certificates, identities, client credentials.

Layout of `DIR` (0700; mounted read-only into the field broker, see field_broker.config):

    ca.pem                  the CA clients verify the broker with (public)
    server.pem              the broker's certificate (public)
    server-key.pem          its key (0600)
    passwords               the Mosquitto password file: every identity (0600)
    clients/<user>.password the edge's own identities' passwords, for the sensor and the simulator (0600)

The CA's key stays out of `DIR`, in `<DIR>-ca/` unless `ca_dir` says otherwise: the broker never
needs it, only `init` does to issue a server certificate for new names.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgefleet.errors import EdgefleetError
from edgehub.certs import ensure_certs
from field_broker.config import CA_FILE, PASSWORD_FILE, SERVER_CERT, SERVER_KEY
from field_broker.identities import GATEWAY_USER, RESERVED_USERS, SENSOR_USER, Role, role_of
from field_broker.passwords import (
    PasswordFileError,
    check_username,
    hash_password,
    new_password,
    read_password_file,
    write_password_file,
    write_secret,
)

__all__ = [
    "DEFAULT_HOSTS",
    "IMAGE_UIDS",
    "FieldDir",
    "FieldSecretsError",
    "add_device",
    "client_password_file",
    "give_to_images",
    "init_field_dir",
    "list_identities",
    "remove_device",
]

# Every certificate covers these: this machine, and the broker's name as an IoT Edge module
# (`fieldbroker`) and as a compose service (`field-broker`).
DEFAULT_HOSTS: Final = ("localhost", "127.0.0.1", "fieldbroker", "field-broker")
CLIENTS: Final = "clients"


# The uid each image runs as (scripts/images/catalog.py; tests/edgefleet_cli/test_field.py keeps
# them equal): the broker reads the directory, the sensor and the simulator their own password.
IMAGE_UIDS: Final = {"field-broker": 10007, SENSOR_USER: 10003, GATEWAY_USER: 10005}


class FieldSecretsError(EdgefleetError):
    """Raise when the config directory or an identity cannot be used as asked."""


@dataclass(frozen=True, slots=True)
class FieldDir:
    """What `init` made: the directory, where the CA key is, and the names the certificate covers."""

    path: Path
    ca_dir: Path
    hosts: tuple[str, ...]


def client_password_file(field_dir: Path, user: str) -> Path:
    """Return the file holding the password of one of the edge's own identities."""
    return Path(field_dir) / CLIENTS / f"{user}.password"


def init_field_dir(field_dir: Path, hosts: Iterable[str] = (), ca_dir: Path | None = None) -> FieldDir:
    """Create (or bring up to date) the config directory: certificates for `hosts`, the edge's identities.

    Existing identities and passwords are kept; the server certificate is issued again only when
    the names change or it nears expiry.
    """
    field_dir = Path(field_dir).resolve()
    ca_dir = Path(ca_dir).resolve() if ca_dir is not None else field_dir.with_name(f"{field_dir.name}-ca")
    names = tuple(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    ips = [name for name in names if _is_ip(name)]
    for directory in (field_dir, field_dir / CLIENTS, ca_dir):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
    paths = ensure_certs(ca_dir, ips, [name for name in names if not _is_ip(name)])
    shutil.copyfile(paths.ca_cert, field_dir / CA_FILE)
    shutil.copyfile(paths.server_cert, field_dir / SERVER_CERT)
    write_secret(field_dir / SERVER_KEY, paths.server_key.read_text(encoding="utf-8"))
    users = _read_users(field_dir)
    for user in (SENSOR_USER, GATEWAY_USER):
        secret_file = client_password_file(field_dir, user)
        if user in users and secret_file.is_file():
            continue
        password = new_password()
        write_secret(secret_file, password + "\n")
        users[user] = hash_password(password)
    write_password_file(field_dir / PASSWORD_FILE, users)
    return FieldDir(field_dir, ca_dir, names)


def add_device(field_dir: Path, device_id: str, password: str | None = None) -> str:
    """Add a device identity (username = its id); return its password (a new random one unless given)."""
    try:
        check_username(device_id)
    except PasswordFileError as err:
        raise FieldSecretsError(str(err)) from None
    if device_id in RESERVED_USERS:
        raise FieldSecretsError(f"{device_id!r} is reserved for the edge's own {role_of(device_id).value} identity")
    users = _read_users(field_dir)
    if device_id in users:
        raise FieldSecretsError(
            f"device {device_id!r} exists already; `edgefleet field remove-device {device_id}` first to replace it"
        )
    password = password if password is not None else new_password()
    if not password:
        raise FieldSecretsError("the password is empty")
    users[device_id] = hash_password(password)
    write_password_file(Path(field_dir) / PASSWORD_FILE, users)
    return password


def remove_device(field_dir: Path, device_id: str) -> None:
    """Remove a device identity; it cannot connect once the broker reloaded."""
    users = _read_users(field_dir)
    if device_id in RESERVED_USERS:
        raise FieldSecretsError(f"{device_id!r} is the edge's own {role_of(device_id).value} identity, not a device")
    if device_id not in users:
        raise FieldSecretsError(f"no device {device_id!r} in {Path(field_dir) / PASSWORD_FILE}")
    del users[device_id]
    write_password_file(Path(field_dir) / PASSWORD_FILE, users)


def list_identities(field_dir: Path) -> list[tuple[str, Role]]:
    """Return every identity with its role, devices sorted by id after the edge's own."""
    users = _read_users(field_dir)
    return sorted(((user, role_of(user)) for user in users), key=lambda item: (item[1] is Role.DEVICE, item[0]))


def _read_users(field_dir: Path) -> dict[str, str]:
    path = Path(field_dir) / PASSWORD_FILE
    if not Path(field_dir).is_dir():
        raise FieldSecretsError(
            f"no field broker config directory at {field_dir}; run `edgefleet field init --dir {field_dir}`"
        )
    try:
        return read_password_file(path)
    except PasswordFileError as err:
        raise FieldSecretsError(str(err)) from None
    except OSError as err:
        raise FieldSecretsError(f"cannot read {path}: {err.strerror}") from None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def give_to_images(field_dir: Path) -> dict[Path, int]:
    """Hand the directory to the field broker image's user, each client password to its image's user.

    Bind mounts keep the host's owners and modes, and every file here is 0600: without this the
    containers cannot read their secrets. Needs root; returns what now belongs to which uid.
    """
    field_dir = Path(field_dir).resolve()
    owners: dict[Path, int] = {}
    for path in (field_dir, *sorted(field_dir.rglob("*"))):
        owners[path] = IMAGE_UIDS["field-broker"]
    for user in (SENSOR_USER, GATEWAY_USER):
        owners[client_password_file(field_dir, user)] = IMAGE_UIDS[user]
    try:
        for path, uid in owners.items():
            os.chown(path, uid, uid)
    except PermissionError:
        raise FieldSecretsError(
            f"cannot hand {field_dir} to the images' users without root: run `sudo edgefleet field init "
            f"--dir {field_dir} --image-owners`, or chown it yourself (uids: "
            + ", ".join(f"{name} {uid}" for name, uid in IMAGE_UIDS.items())
            + ")"
        ) from None
    return owners
