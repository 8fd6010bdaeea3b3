"""Provision what `docker-compose up` needs and must never find in an image or the compose file.

`edgefleet compose secrets --dir deployment/secrets` writes, once (running it again keeps them):

    <dir>/field/         the field broker's config directory (`edgefleet field init`)
    <dir>/module-keys    each module's SAS key, for the stand-in (`--module-keys-file`), 0600
    <dir>/hub/           the hub broker's users file (`passwords`, for the sink) and its clients'
                         passwords (`clients/edgefleet-edgehub.password` for the stand-in,
                         `clients/edgefleet-dashboard.password` for the dashboard), 0600 (edgehub.hub_auth)

and sets each module's key in compose's `.env` (`EDGEFLEET_<MODULE>_KEY`, file 0600), which the
modules' `EdgeHubConnectionString` reads: the SDK takes its key from that variable only. As root it
hands each file to the uid of the container that reads it (bind mounts keep the host's owners).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgefleet.endpoints import MODULES
from edgefleet.errors import EdgefleetError
from edgefleet.hub_wire import HUB_DASHBOARD_USER, HUB_PUBLISHER_USER
from edgefleet_cli.field_secrets import FieldSecretsError, give_to_images, init_field_dir
from edgehub.auth import KeysError, ensure_module_keys
from edgehub.hub_auth import ensure_hub_credentials

__all__ = ["DASHBOARD_UID", "EDGEHUB_UID", "SINK_UID", "ComposeSecrets", "key_variable", "provision_compose_secrets"]

# The edgehub image's uid (scripts/images/catalog.py; tests/edgefleet_cli/test_compose_secrets.py
# keeps them equal): the stand-in reads the module keys.
EDGEHUB_UID: Final = 10002
# The sink's and the dashboard's images' uids: the sink reads the hub's users file, the dashboard its password.
SINK_UID: Final = 10001
DASHBOARD_UID: Final = 10006
KEYS_FILE: Final = "module-keys"
HUB_DIR: Final = "hub"


@dataclass(frozen=True, slots=True)
class ComposeSecrets:
    """Where `provision_compose_secrets` put everything."""

    field_dir: Path
    keys_file: Path
    hub_dir: Path
    env_file: Path
    modules: tuple[str, ...]


def key_variable(module: str) -> str:
    """Return the compose variable holding a module's SAS key."""
    return f"EDGEFLEET_{re.sub(r'[^A-Za-z0-9]', '_', module).upper()}_KEY"


def provision_compose_secrets(
    secrets_dir: Path, env_file: Path, modules: Sequence[str] | None = None, image_owners: bool = False
) -> ComposeSecrets:
    """Create (or keep) the field directory and module keys; write the keys into `env_file`."""
    secrets_dir = Path(secrets_dir).resolve()
    names = tuple(modules) if modules is not None else tuple(m for m, e in MODULES.items() if e.edgehub_client)
    field = init_field_dir(secrets_dir / "field")
    try:
        keys = ensure_module_keys(secrets_dir, names)
    except KeysError as err:
        raise EdgefleetError(str(err)) from None
    hub = ensure_hub_credentials(secrets_dir / HUB_DIR)
    _set_env(Path(env_file), {key_variable(m): base64.b64encode(keys[m]).decode() for m in names})
    made = ComposeSecrets(field.path, secrets_dir / KEYS_FILE, hub.folder, Path(env_file).resolve(), names)
    if image_owners:
        give_to_images(made.field_dir)
        # Each file to the uid of the one container that mounts it (bind mounts keep the host's owners).
        owners = {
            made.keys_file: (EDGEHUB_UID, "the stand-in"),
            hub.users_file: (SINK_UID, "the sink"),
            hub.password_files[HUB_PUBLISHER_USER]: (EDGEHUB_UID, "the stand-in"),
            hub.password_files[HUB_DASHBOARD_USER]: (DASHBOARD_UID, "the dashboard"),
        }
        for path, (uid, reader) in owners.items():
            try:
                os.chown(path, uid, uid)
            except PermissionError:
                raise FieldSecretsError(
                    f"cannot hand {path} to {reader}'s uid {uid} without root: run as root "
                    f"or `chown {uid}:{uid} {path}`"
                ) from None
    return made


def _set_env(path: Path, values: dict[str, str]) -> None:
    """Set `values` in a KEY=value file, keeping its other lines; the file ends up 0600."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [line for line in lines if line.split("=", 1)[0].strip() not in values]
    text = "\n".join([*kept, *(f"{key}={value}" for key, value in values.items())]) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing .env keeps its mode through O_CREAT
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
