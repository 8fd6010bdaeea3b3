"""The hub broker's logins in tests: credentials as `edgefleet compose secrets` writes them, clients that use them.

`HubLogins` provisions a folder with the real `ensure_hub_credentials` (the sink's users file, the
stand-in's and the dashboard's password files) and makes publishers and brokers that log in with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from edgefleet.hub_wire import HUB_DASHBOARD_USER, HUB_PUBLISHER_USER
from edgefleet.mqtt_login import PasswordFile
from edgehub.broker import Broker, Listener
from edgehub.hub import HubPublisher
from edgehub.hub_auth import HubCredentials, HubUsers, ensure_hub_credentials, write_hub_broker_auth

__all__ = ["HubLogins", "hub_logins"]


class HubLogins:
    """A provisioned hub credentials folder."""

    def __init__(self, folder: Path) -> None:
        self.credentials: HubCredentials = ensure_hub_credentials(folder)

    @property
    def users_file(self) -> Path:
        """Return the sink's users file (`--users-file`)."""
        return self.credentials.users_file

    def password_file(self, user: str = HUB_PUBLISHER_USER) -> Path:
        """Return a client's password file (`--upstream-password-file`, `--hub-password-file`)."""
        return self.credentials.password_files[user]

    def password(self, user: str = HUB_PUBLISHER_USER) -> str:
        """Return a client's password."""
        return PasswordFile.read(self.password_file(user)).password.get_secret_value()

    def publisher(
        self, port: int, client_id: str, *, user: str = HUB_PUBLISHER_USER, window: int = 2_000
    ) -> HubPublisher:
        """Return a started `HubPublisher` logged in as `user` (the stand-in unless told otherwise)."""
        password = PasswordFile.read(self.password_file(user)).password
        return HubPublisher("127.0.0.1", port, client_id, window=window, username=user, password=password).start()

    def sink_flags(self) -> list[str]:
        """Return the sink service's login flags."""
        return ["--users-file", str(self.users_file)]

    def standin_flags(self) -> list[str]:
        """Return the stand-in's login flags for `--upstream-mqtt`."""
        return ["--upstream-password-file", str(self.password_file(HUB_PUBLISHER_USER))]

    def dashboard_flags(self) -> list[str]:
        """Return the dashboard's login flags for `--hub`."""
        return ["--hub-password-file", str(self.password_file(HUB_DASHBOARD_USER))]

    def broker(self, folder: Path, port: int, users: Sequence[str] | None = None) -> Broker:
        """Return a plain hub broker (not started) that takes these logins, as `edgefleet up`'s dashboard hub."""
        hashes = HubUsers.read(self.users_file).hashes
        chosen = {user: hashes[user] for user in users} if users is not None else hashes
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Broker(folder, "hub", [Listener("127.0.0.1", port)], auth=write_hub_broker_auth(folder, chosen))


@pytest.fixture
def hub_logins(tmp_path: Path) -> HubLogins:
    """Return hub credentials provisioned in the test's folder."""
    return HubLogins(tmp_path / "hub-logins")
