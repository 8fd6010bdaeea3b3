"""Module identities as edgeHub checks them: per-module keys and SAS tokens verified at CONNECT.

A module connects with the SDK's MQTT credentials (azure-iot-device,
`iothub/pipeline/pipeline_stages_iothub_mqtt.py` and `common/auth/sastoken.py`):

- client id `<device>/<module>`;
- username `<hub host>/<device>/<module>/?api-version=...&DeviceClientType=...`;
- password `SharedAccessSignature sr=<url-encoded hub/devices/<device>/modules/<module>>&sig=<url-encoded
  base64 HMAC-SHA256(key, sr + "\\n" + se)>&se=<expiry, epoch seconds>`.

`check_connect` is the pure check edgeHub's `DeviceIdentityProvider` makes (Azure/iotedge,
edge-hub/core/src/Microsoft.Azure.Devices.Edge.Hub.Mqtt/DeviceIdentityProvider.cs): a token must be
present, the client id must be the token's identity, and the token must be valid for it. Keys are
32 random bytes per module, created once and kept in the stand-in's state folder, or given by the
operator in a keys file (`module=base64key` lines, as `format_keys_file` writes them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.errors import EdgefleetError
from edgefleet.filemodes import write_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "CONNACK_ACCEPTED",
    "CONNACK_NOT_AUTHORIZED",
    "CONNACK_SERVER_UNAVAILABLE",
    "CONNACK_UNACCEPTABLE_PROTOCOL",
    "KEY_BYTES",
    "KeysError",
    "ModuleIdentity",
    "check_connect",
    "ensure_module_keys",
    "format_keys_file",
    "generate_key",
    "read_keys_file",
    "sas_resource",
    "sas_token",
    "sas_username",
]

# MQTT 3.1.1 CONNACK return codes (section 3.2.2.3). edgeHub refuses every client it cannot
# authenticate with 5: its protocol gateway's MqttAdapter.Connect answers an unauthenticated
# identity with `ConnAckPacket { ReturnCode = ConnectReturnCode.RefusedNotAuthorized }`, and the
# SDK turns 5 into a CredentialError instead of retrying. 3 answers an error while connecting
# (the adapter's catch-all, `RefusedServerUnavailable`): the SDK retries that.
CONNACK_ACCEPTED = 0
CONNACK_UNACCEPTABLE_PROTOCOL = 1
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_NOT_AUTHORIZED = 5

KEY_BYTES = 32
# IoT Hub takes symmetric keys of 16 to 64 bytes.
_MIN_KEY_BYTES = 16
_MAX_KEY_BYTES = 64
_TOKEN_PREFIX = "SharedAccessSignature "
_KEY_LINE = re.compile(r"\s*([^=\s#][^=\s]*)\s*=\s*(\S+)\s*")
_GENERATE_HINT = "generate one with: openssl rand -base64 32"


class KeysError(EdgefleetError):
    """Raise when module keys cannot be read or written; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class ModuleIdentity:
    """Who may connect to one module's broker: the hub host name in tokens, the edge device, the module, its key."""

    hub_hostname: str
    device: str
    module: str
    key: bytes = field(repr=False)

    @property
    def client_id(self) -> str:
        """Return the MQTT client id the SDK uses for this module."""
        return f"{self.device}/{self.module}"


def generate_key() -> bytes:
    """Return a new random module key."""
    return secrets.token_bytes(KEY_BYTES)


def sas_resource(hub_hostname: str, device: str, module: str) -> str:
    """Return the URL-encoded resource (`sr`) of a module's SAS token."""
    return urllib.parse.quote(f"{hub_hostname}/devices/{device}/modules/{module}", safe="")


def _signature(key: bytes, resource: str, expiry: str) -> bytes:
    return hmac.new(key, f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()


def sas_token(identity: ModuleIdentity, expiry_s: int) -> str:
    """Return a SAS token for `identity` valid until `expiry_s` (epoch seconds), as the SDK builds it."""
    resource = sas_resource(identity.hub_hostname, identity.device, identity.module)
    signature = base64.b64encode(_signature(identity.key, resource, str(expiry_s))).decode()
    return f"{_TOKEN_PREFIX}sr={resource}&sig={urllib.parse.quote(signature, safe='')}&se={expiry_s}"


def sas_username(hub_hostname: str, device: str, module: str) -> str:
    """Return the MQTT username the SDK sends for a module (without its client-type details)."""
    return f"{hub_hostname}/{device}/{module}/?api-version=2019-10-01"


def check_connect(
    identity: ModuleIdentity, client_id: str, username: str | None, password: bytes | None, now_s: float
) -> str | None:
    """Return why a CONNECT must be refused on `identity`'s broker, or None when it is that module."""
    if username is None or password is None:
        return "no credentials (anonymous)"
    parts = username.split("/", 3)
    if len(parts) < 3:
        return "malformed username"
    device, module = parts[1], parts[2]
    if device != identity.device or module != identity.module:
        return f"username names {device}/{module}, this broker serves {identity.client_id}"
    if client_id != identity.client_id:
        return f"client id {client_id!r} is not {identity.client_id!r}"
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        return "malformed token"
    if not text.startswith(_TOKEN_PREFIX):
        return "malformed token"
    fields: dict[str, str] = {}
    for item in text[len(_TOKEN_PREFIX) :].split("&"):
        name, sep, value = item.partition("=")
        if not sep or name in fields:
            return "malformed token"
        fields[name] = value
    if set(fields) != {"sr", "sig", "se"}:
        return "malformed token"
    resource, expiry = fields["sr"], fields["se"]
    if (
        urllib.parse.unquote(resource).lower()
        != urllib.parse.unquote(sas_resource(identity.hub_hostname, identity.device, identity.module)).lower()
    ):
        return f"token is for {urllib.parse.unquote(resource)!r}"
    if not expiry.isdigit():
        return "malformed token"
    if int(expiry) <= now_s:
        return "token expired"
    try:
        given = base64.b64decode(urllib.parse.unquote(fields["sig"]), validate=True)
    except (binascii.Error, ValueError):
        return "malformed token"
    # Signed over `sr` as sent: the SDK signs the URL-encoded resource.
    if not hmac.compare_digest(given, _signature(identity.key, resource, expiry)):
        return "wrong signature (key)"
    return None


# -- key files ------------------------------------------------------------------------------------


def format_keys_file(keys: Mapping[str, bytes]) -> str:
    """Return a keys file: one `module=base64key` line per module."""
    return "".join(f"{module}={base64.b64encode(key).decode()}\n" for module, key in keys.items())


def read_keys_file(path: Path, modules: Sequence[str]) -> dict[str, bytes]:
    """Return the keys of `modules` from an operator's keys file, or raise saying how to fix it."""
    fix = f"write one MODULE=BASE64KEY line per module ({_GENERATE_HINT}) and chmod 600 {path}"
    try:
        info = path.stat()
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise KeysError(f"module keys file {path} does not exist: {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise KeysError(f"cannot read module keys file {path} ({err}): {fix}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeysError(f"module keys file {path} is not a file: {fix}")
    if info.st_mode & 0o077:
        raise KeysError(
            f"module keys file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}): chmod 600 {path}"
        )
    keys = _parse_keys(text, str(path), fix)
    missing = [module for module in modules if module not in keys]
    if missing:
        raise KeysError(f"module keys file {path} has no key for {', '.join(missing)}: {fix}")
    extra = sorted(set(keys) - set(modules))
    if extra:
        logger.info("Module keys file %s also holds keys for %s, which the stand-in does not run", path, extra)
    return {module: keys[module] for module in modules}


def _parse_keys(text: str, where: str, fix: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _KEY_LINE.fullmatch(line)
        if match is None:
            raise KeysError(f"{where} line {number} is not MODULE=BASE64KEY: {fix}")
        module, encoded = match.groups()
        if module in keys:
            raise KeysError(f"{where} line {number} gives {module} a second key: keep one line per module")
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise KeysError(f"{where} line {number}: the key of {module} is not base64: {fix}") from None
        if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
            raise KeysError(
                f"{where} line {number}: the key of {module} has {len(key)} bytes, "
                f"it needs {_MIN_KEY_BYTES} to {_MAX_KEY_BYTES}: {_GENERATE_HINT}"
            )
        keys[module] = key
    return keys


def ensure_module_keys(folder: Path, modules: Sequence[str]) -> dict[str, bytes]:
    """Return every module's key from `<folder>/module-keys`, creating missing ones (folder 0700, file 0600)."""
    path = folder / "module-keys"
    fix = f"delete {path} to make new keys (modules must then be restarted with their new environment)"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # a folder made by an older run keeps its mode otherwise
        text = path.read_text("utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as err:
        raise KeysError(f"cannot read or create module keys in {folder} ({err}): check its owner and mode") from None
    keys = _parse_keys(text, str(path), fix)
    missing = [module for module in modules if module not in keys]
    if missing or (path.exists() and stat.S_IMODE(path.stat().st_mode) != 0o600):
        keys.update({module: generate_key() for module in missing})
        write_atomic(path, format_keys_file(keys).encode())
        if missing:
            logger.info("Created module keys for %s in %s", ", ".join(missing), path)
    return {module: keys[module] for module in modules}
