"""`edgefleet compose secrets`: provision the field broker's secrets and the module keys for docker-compose."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefleet_cli.commands import Subcommands

__all__ = ["add_compose_commands"]

_DEPLOYMENT = Path("deployment")


def add_compose_commands(sub: Subcommands) -> None:
    """Add `compose` with its `secrets` subcommand."""
    compose = sub.add_parser("compose", help="prepare deployment/docker-compose.yml's secrets")
    compose_sub = compose.add_subparsers(dest="compose_command", required=True)
    secrets = compose_sub.add_parser(
        "secrets",
        help="field broker certificates and identities, module SAS keys, hub broker logins (kept when they exist)",
    )
    secrets.add_argument("--dir", default=str(_DEPLOYMENT / "secrets"), help="secrets directory (%(default)s)")
    secrets.add_argument(
        "--env-file", default=str(_DEPLOYMENT / ".env"), help="compose's .env to put module keys in (%(default)s)"
    )
    secrets.add_argument(
        "--image-owners",
        action="store_true",
        help="hand each file to the container user that reads it (needs root; containers cannot read them otherwise)",
    )
    secrets.set_defaults(func=cmd_compose_secrets)


def cmd_compose_secrets(args: argparse.Namespace) -> int:
    """Provision the secrets; return 0."""
    from edgefleet_cli.compose_secrets import key_variable, provision_compose_secrets

    made = provision_compose_secrets(Path(args.dir), Path(args.env_file), image_owners=args.image_owners)
    print(f"field broker config: {made.field_dir} (FIELD_SECRETS_DIR)")
    print(f"module keys for the stand-in: {made.keys_file} (EDGEFLEET_SECRETS_DIR)")
    print(f"hub broker logins: {made.hub_dir} (users file for the sink, passwords for the stand-in and dashboard)")
    print(f"module keys for the modules: {', '.join(key_variable(m) for m in made.modules)} in {made.env_file} (0600)")
    if not args.image_owners:
        print("containers run as their own uids: run again as root with --image-owners before `docker-compose up`")
    return 0
