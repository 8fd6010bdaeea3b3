"""Secrets and CA certificates from mounted files: read once at start, refused when others may read them.

Secrets come from files (container mounts), never from the environment: `PasswordFile` reads one
once and keeps it as a `SecretStr`; `read_secret_text` is the same check for any secret file.
`check_ca_file` and `tls_context` turn a CA certificate into a client context that checks the
server's certificate and host name. No MQTT here: images without paho (training) use it too.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, SecretStr
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

__all__ = ["PasswordFile", "check_ca_file", "read_secret_text", "tls_context"]

# Permission bits for "other" users: a secret readable (or replaceable) by any account on the host.
_OTHERS = stat.S_IROTH | stat.S_IWOTH | stat.S_IXOTH


class PasswordFile:
    """A password read once from a secret file (mounted into the container), never from the environment."""

    __slots__ = ("password", "path")

    def __init__(self, path: Path, password: SecretStr) -> None:
        self.path = path
        self.password = password

    @classmethod
    def read(cls, path: Path | str) -> PasswordFile:
        """Read the file's first line; raise ValueError saying how to fix a missing, open or empty file."""
        path = Path(path).expanduser()
        text = read_secret_text(path, "the password")
        # `echo secret > file` adds a newline that is no part of the password.
        password = text.removesuffix("\n").removesuffix("\r")
        if not password:
            raise ValueError(f"{path} is empty: write the password into it (one line)")
        if "\n" in password:
            raise ValueError(f"{path} holds more than one line: keep only the password in it")
        return cls(path, SecretStr(password))

    def __repr__(self) -> str:
        return f"PasswordFile({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PasswordFile) and (self.path, self.password) == (other.path, other.password)

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # A path in, the file read at validation (start); dumped as its path, never as the password.
        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(lambda value: str(value.path))
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "path"}

    @classmethod
    def _validate(cls, value: object) -> PasswordFile:
        if isinstance(value, PasswordFile):
            return value
        if isinstance(value, str | os.PathLike):
            return cls.read(Path(value))
        raise ValueError("expected the path of a file holding the password")


def read_secret_text(path: Path, what: str = "the secret") -> str:
    """Return a secret file's text; raise ValueError saying how to fix a missing, unreadable or open file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: mount the secret file there, or fix the path") from None
    except OSError as err:
        raise ValueError(f"cannot open {path} ({err.strerror}): fix the path or its folder's permissions") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a file: point at the file that holds {what}")
    if info.st_mode & _OTHERS:
        raise ValueError(
            f"{path} is open to every user on the host (mode {stat.filemode(info.st_mode)}): "
            f"run chmod 600 {path} (readable by its owner only)"
        )
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise ValueError(
            f"cannot read {path} (permission denied): make it readable by this process's user "
            f"(uid {os.geteuid()}), e.g. chown {os.geteuid()} {path} && chmod 600 {path}"
        ) from None
    except OSError as err:
        raise ValueError(f"cannot read {path} ({err.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text: write {what} into it as plain text") from None


def check_ca_file(path: Path) -> Path:
    """Return `path` if it holds a PEM CA certificate; raise ValueError saying how to fix it otherwise."""
    path = path.expanduser()
    if not path.is_file():
        raise ValueError(f"{path} does not exist: mount the CA certificate (PEM) that signed the broker's certificate")
    try:
        tls_context(path)
    except PermissionError:
        raise ValueError(f"cannot read {path} (permission denied): make it readable by this process's user") from None
    except (ssl.SSLError, OSError) as err:
        raise ValueError(
            f"{path} is not a PEM CA certificate ({getattr(err, 'reason', None) or err}): "
            "use the CA certificate file (-----BEGIN CERTIFICATE-----) that signed the broker's certificate"
        ) from None
    return path


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """Return a client context trusting only `ca_file`, checking the broker's host name, TLS 1.2 or later."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
