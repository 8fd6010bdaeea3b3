"""`edgefleet field init|add-device|remove-device|list`: provision the field broker's identities and certificates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgefleet_cli.commands import Subcommands

__all__ = ["DEFAULT_FIELD_DIR", "add_field_commands"]

DEFAULT_FIELD_DIR = "/etc/edgefleet/field"
_RELOAD_HINT = (
    "A running field broker lets the change in within a few seconds (it watches the password file); "
    "`docker kill -s HUP <container>` or `kill -HUP <field_broker pid>` does it at once."
)


def add_field_commands(sub: Subcommands) -> None:
    """Add `field` with its `init`, `add-device`, `remove-device` and `list` subcommands."""
    field = sub.add_parser("field", help="provision the field broker: certificates, device identities")
    field_sub = field.add_subparsers(dest="field_command", required=True)

    init = field_sub.add_parser("init", help="create the CA, the server certificate and the edge's own identities")
    init.add_argument("--dir", default=DEFAULT_FIELD_DIR, help="config directory (default: %(default)s)")
    init.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name or IP devices reach the broker at (repeat; localhost, 127.0.0.1, fieldbroker always)",
    )
    init.add_argument("--ca-dir", help="where the CA key is kept (default: <dir>-ca, outside the broker's directory)")
    init.add_argument(
        "--image-owners",
        action="store_true",
        help="hand the files to the container users that read them (compose, IoT Edge binds; needs root)",
    )
    init.set_defaults(func=cmd_field_init)

    add = field_sub.add_parser("add-device", help="add a device identity; prints its password once")
    add.add_argument("device_id")
    add.add_argument("--dir", default=DEFAULT_FIELD_DIR, help="config directory (default: %(default)s)")
    add.add_argument("--password-file", help="take the device's password from this file instead of generating one")
    add.set_defaults(func=cmd_field_add_device)

    remove = field_sub.add_parser("remove-device", help="remove a device identity")
    remove.add_argument("device_id")
    remove.add_argument("--dir", default=DEFAULT_FIELD_DIR, help="config directory (default: %(default)s)")
    remove.set_defaults(func=cmd_field_remove_device)

    listing = field_sub.add_parser("list", help="list the identities and their roles")
    listing.add_argument("--dir", default=DEFAULT_FIELD_DIR, help="config directory (default: %(default)s)")
    listing.set_defaults(func=cmd_field_list)


def cmd_field_init(args: argparse.Namespace) -> int:
    """Create or update the config directory; return 0."""
    from edgefleet_cli.field_secrets import client_password_file, give_to_images, init_field_dir
    from field_broker.identities import GATEWAY_USER, SENSOR_USER

    made = init_field_dir(Path(args.dir), args.host, Path(args.ca_dir) if args.ca_dir else None)
    if args.image_owners:
        give_to_images(made.path)
    print(f"field broker config in {made.path} (certificate for {', '.join(made.hosts)})")
    print(f"CA key in {made.ca_dir}: keep it off the broker; only `field init` needs it")
    print(f"sensor:    user {SENSOR_USER}, password in {client_password_file(made.path, SENSOR_USER)}")
    print(f"simulator: user {GATEWAY_USER}, password in {client_password_file(made.path, GATEWAY_USER)}")
    print(f"clients verify the broker with {made.path / 'ca.pem'}; add devices with `edgefleet field add-device ID`")
    return 0


def cmd_field_add_device(args: argparse.Namespace) -> int:
    """Add a device and print its password (unless it was given); return 0."""
    from edgefleet.errors import EdgefleetError
    from edgefleet_cli.field_secrets import add_device

    password = None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise EdgefleetError(f"cannot read --password-file {args.password_file}: {err.strerror}") from None
    issued = add_device(Path(args.dir), args.device_id, password)
    print(f"added device {args.device_id}: username {args.device_id}, topic fleet/{args.device_id}/telemetry")
    if password is None:
        print(f"password (shown once; give it to the device): {issued}")
    print(_RELOAD_HINT, file=sys.stderr)
    return 0


def cmd_field_remove_device(args: argparse.Namespace) -> int:
    """Remove a device; return 0."""
    from edgefleet_cli.field_secrets import remove_device

    remove_device(Path(args.dir), args.device_id)
    print(f"removed device {args.device_id}")
    print(_RELOAD_HINT, file=sys.stderr)
    return 0


def cmd_field_list(args: argparse.Namespace) -> int:
    """Print each identity and its role; return 0."""
    from edgefleet_cli.field_secrets import list_identities

    for user, role in list_identities(Path(args.dir)):
        print(f"{user}\t{role.value}")
    return 0
